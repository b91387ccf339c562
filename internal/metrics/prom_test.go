package metrics

import (
	"bytes"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// full is a sample with every family present: a running VM with every
// part read, a stopped one, the host with a repair and Tailscale.
func full() Sample {
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	return Sample{
		Time: t0,
		VMs: []VM{
			{Name: "vm1", Address: "10.1.0.2", Hypervisor: "qemu", State: lifecycle.Running, GuestReady: true, Started: t0,
				Boots: runner.Boots{Starts: 3, Restarts: 1, LastReady: 31500 * time.Millisecond},
				CPU:   90 * time.Second, Memory: 300 << 20, GuestMemory: 512 << 20, HasResources: true,
				Traffic:     Traffic{RxBytes: 1000, RxPackets: 10, TxBytes: 2000, TxPackets: 20, TxDrops: 1},
				HasTraffic:  true,
				DroppedFrom: Count{Packets: 5, Bytes: 420}, DroppedTo: Count{Packets: 7, Bytes: 588}, HasDrops: true,
				Disk: 19 << 20, HasDisk: true, Snapshots: 2, HasSnaps: true},
			{Name: "vm2", Address: "10.2.0.2", Hypervisor: "cloud-hypervisor", State: lifecycle.Stopped, HasTraffic: true, HasDrops: true},
		},
		Host: Host{TablePresent: true, TableRead: true, Keeper: true, Repairs: 2, LastRepair: t0,
			Tailscale: &tailscale.Report{Routes: []tailscale.Route{{VM: "vm1", Subnet: netip.MustParsePrefix("10.1.0.0/24"), Advertised: true}}},
			HasDisk:   true, DiskImages: 400 << 20, DiskTotal: 500 << 20, DiskAt: t0},
		Errors: map[string]error{"tailscale": errTest},
	}
}

var errTest = &config.Error{Msg: "test"}

// exposition is sample s in Prometheus' text format, as the endpoint
// writes it.
func exposition(t *testing.T, s Sample) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectorOf(s))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// sampleCollector collects one fixed sample.
type sampleCollector struct{ s Sample }

func collectorOf(s Sample) prometheus.Collector { return sampleCollector{s} }
func (c sampleCollector) Describe(ch chan<- *prometheus.Desc) {
	(&Collector{}).Describe(ch)
}
func (c sampleCollector) Collect(ch chan<- prometheus.Metric) {
	Emit(c.s, "v1.2.3", func(m prometheus.Metric) { ch <- m })
}

// TestExposition: every family, as the endpoint writes it (golden), is
// consistent with its description (a pedantic registry checks), and
// passes promtool's checks of Prometheus' naming conventions.
func TestExposition(t *testing.T) {
	out := exposition(t, full())
	// The Go version differs between machines.
	golden := strings.Replace(out, `goversion="`+goVersion()+`"`, `goversion="GO"`, 1)
	testenv.Golden(t, "exposition.txt", golden)

	testenv.NeedCommands(t, "promtool")
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(out)
	if msg, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(msg)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, msg)
	}
	// A check that cannot fail proves nothing.
	cmd = exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader("# HELP microvm_bad_bytes x\n# TYPE microvm_bad_bytes counter\nmicrovm_bad_bytes 1\n")
	if msg, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("promtool passes a counter without _total: %s", msg)
	}
}

// TestStoppedVM: a stopped VM has its state, its counts and its network,
// and no series that only a running one has.
func TestStoppedVM(t *testing.T) {
	out := exposition(t, full())
	for _, want := range []string{
		`microvm_vm_state{state="stopped",vm="vm2"} 1`,
		`microvm_vm_state{state="running",vm="vm2"} 0`,
		`microvm_vm_guest_ready{vm="vm2"} 0`,
		`microvm_vm_vmm_restarts_total{vm="vm2"} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %s", want)
		}
	}
	for _, family := range []string{"microvm_vm_cpu_seconds_total", "microvm_vm_memory_resident_bytes", "microvm_vm_start_time_seconds", "microvm_vm_boot_ready_seconds"} {
		if strings.Contains(out, family+`{vm="vm2"}`) {
			t.Errorf("a stopped VM has %s", family)
		}
	}
}
