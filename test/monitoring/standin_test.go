package monitoring

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// standIns is the file of TestStandIns: two VMs and a monitoring VM, mon3,
// whose allow list opens the metrics port at its own gateway, where the
// host serves the metrics.
const standIns = `[host]
uplink = "eth0"
state_dir = %q
run_dir = %q

[host.metrics]
listen = "10.43.0.1:9753"

[vm.mon1]
subnet = "10.41.0.0/24"
allow = ["vm:mon2 tcp 80"]

[vm.mon2]
subnet = "10.42.0.0/24"

[vm.mon3]
subnet = "10.43.0.0/24"
allow = ["10.43.0.1 tcp 9753"]
`

// TestStandIns: microvm host serves the metrics at the monitoring VM's
// gateway; Prometheus, running in that VM's stand-in, scrapes them; the
// other VMs cannot reach the endpoint; a flood from one VM to another
// (pings, where mon1's opening to mon2 is tcp 80 only) raises the drop
// counters of both, and of no third; a flushed table shows as a repair. Every VM has the families a VM has without a guest,
// and the host has its own.
func TestStandIns(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "ping", "useradd", "prometheus")
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	os.WriteFile(file, []byte(fmt.Sprintf(standIns, filepath.Join(dir, "state"), testenv.RunDir(t, "mvm"))), 0o644)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	bin := testenv.Binaries(t)
	sb := sandboxtest.New(t, in)
	mustRun(t, sb.Host, bin, "apply", "--host-only", "-f", file)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	hostLog := host(t, sb, bin, file)
	prom := startPrometheus(t, sb.VMs["mon3"], "10.43.0.1:9753")

	t.Run("only the monitoring VM reaches the endpoint", func(t *testing.T) {
		// Prometheus in mon3 scrapes it (startPrometheus waited for up).
		for _, p := range []struct {
			from string
			to   netip.AddrPort
		}{
			{"mon2", netip.MustParseAddrPort("10.43.0.1:9753")}, // another VM's gateway
			{"mon2", netip.MustParseAddrPort("10.42.0.1:9753")}, // its own gateway, not opened
			{"mon3", netip.MustParseAddrPort("10.43.0.1:22")},   // the host's sshd: only the port is opened
		} {
			if r := sandbox.TCP(sb.VMs[p.from], p.to); r.Reached {
				t.Errorf("%s reaches %s", p.from, p.to)
			}
		}
		if r := sandbox.TCP(sb.VMs["mon3"], netip.MustParseAddrPort("10.43.0.1:9753")); !r.Reached {
			t.Errorf("mon3 does not reach its gateway's metrics port: %v", r.Err)
		}
	})

	t.Run("families", func(t *testing.T) {
		for _, vm := range []string{"mon1", "mon2", "mon3"} {
			got := prom.families(t, fmt.Sprintf(`,vm=%q`, vm))
			for _, f := range []string{"microvm_vm_info", "microvm_vm_state", "microvm_vm_guest_ready", "microvm_vm_starts_total",
				"microvm_vm_vmm_restarts_total", "microvm_vm_network_receive_bytes_total", "microvm_vm_network_transmit_packets_total",
				"microvm_vm_network_receive_errors_total", "microvm_vm_network_transmit_drops_total",
				"microvm_vm_firewall_dropped_packets_total", "microvm_vm_firewall_dropped_bytes_total", "microvm_vm_disk_bytes"} {
				if !got[f] {
					t.Errorf("%s has no %s", vm, f)
				}
			}
			if v, _ := prom.value(t, fmt.Sprintf(`microvm_vm_state{vm=%q,state="stopped"}`, vm)); v != 1 {
				t.Errorf("%s: a stand-in is a stopped VM, got state stopped = %v", vm, v)
			}
		}
		got := prom.families(t, "")
		for _, f := range []string{"microvm_host_firewall_table_present", "microvm_host_firewall_kept", "microvm_host_firewall_repairs_total",
			"microvm_host_disk_bytes", "microvm_metrics_source_ok", "microvm_build_info", "microvm_host_tailscale_up"} {
			if !got[f] {
				t.Errorf("the host has no %s", f)
			}
		}
		for _, q := range []string{"microvm_host_firewall_table_present", "microvm_host_firewall_kept", `microvm_metrics_source_ok{source="firewall"}`, `microvm_metrics_source_ok{source="links"}`} {
			if v, _ := prom.value(t, q); v != 1 {
				t.Errorf("%s = %v, want 1", q, v)
			}
		}
	})

	t.Run("a flood to a blocked VM", func(t *testing.T) {
		drops := func(vm, dir string) string {
			return fmt.Sprintf(`microvm_vm_firewall_dropped_packets_total{vm=%q,direction=%q}`, vm, dir)
		}
		before := map[string]float64{}
		for _, vm := range []string{"mon1", "mon2", "mon3"} {
			for _, d := range []string{"from", "to"} {
				before[vm+d], _ = prom.value(t, drops(vm, d))
			}
		}
		// Pings, on the pair's opening for tcp 80: policy routing lets
		// the pair through, so the table drops them, and counts. (Between
		// VMs with no opening, routing drops first: the table sees none.)
		flood(t, sb.VMs["mon1"], "10.42.0.2", 200)
		prom.waitFor(t, drops("mon2", "to"), func(v float64) bool { return v >= before["mon2to"]+200 }, 20*time.Second)
		prom.waitFor(t, drops("mon1", "from"), func(v float64) bool { return v >= before["mon1from"]+200 }, 20*time.Second)
		if b, _ := prom.value(t, `microvm_vm_firewall_dropped_bytes_total{vm="mon2",direction="to"}`); b < 200*84 {
			t.Errorf("mon2's dropped bytes: %v, want at least 200 pings' worth", b)
		}
		for _, k := range []struct{ vm, dir string }{{"mon1", "to"}, {"mon2", "from"}, {"mon3", "from"}, {"mon3", "to"}} {
			if v, _ := prom.value(t, drops(k.vm, k.dir)); v >= before[k.vm+k.dir]+100 {
				t.Errorf("%s: %s went from %v to %v with a flood that was not its", k.vm, k.dir, before[k.vm+k.dir], v)
			}
		}
	})

	t.Run("a repair", func(t *testing.T) {
		if out, err := sandbox.Command(sb.Host, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
			t.Fatalf("nft flush ruleset: %s %v", out, err)
		}
		flushed := float64(time.Now().Unix())
		prom.waitFor(t, "microvm_host_firewall_repairs_total", func(v float64) bool { return v == 1 }, 20*time.Second)
		prom.waitFor(t, "microvm_host_firewall_last_repair_timestamp_seconds", func(v float64) bool { return v >= flushed-2 && v <= flushed+5 }, 20*time.Second)
		prom.waitFor(t, "microvm_host_firewall_table_present", func(v float64) bool { return v == 1 }, 20*time.Second)
		if !strings.Contains(hostLog.String(), "restored table inet microvm") {
			t.Errorf("microvm host's log does not show the repair:\n%s", hostLog.String())
		}
	})
}
