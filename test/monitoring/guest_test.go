package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/journal"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// guests is the file of TestGuests before the README's steps add the
// monitoring VM to it: one VM under QEMU (TCG).
const guests = `[host]
uplink = "eth0"
state_dir = %q
run_dir = %q
accel = "tcg"

[defaults]
hypervisor = "qemu"
vcpu = 1
memory = 512

[vm.mon4]
subnet = "10.44.0.0/24"
allow = ["vm:mon tcp 9090"]
`

// readmeSteps are the commands of the README's "A monitoring VM", which
// the test runs as printed (with /etc/microvm its own directory).
var readmeSteps = []string{
	`cp examples/monitoring/prometheus-vm.yml examples/monitoring/alerts.yml /etc/microvm/`,
	`sed -n '/^\[image.monitoring\]/,$p' examples/monitoring/infra.toml >> /etc/microvm/infra.toml`,
	`printf '[host.metrics]\nlisten = "10.9.0.1:9753"\n' >> /etc/microvm/infra.toml`,
	`microvm validate`,
	`microvm apply`,
}

// TestGuests adds the README's monitoring VM (mon, Debian's Prometheus in
// it) to a file with one other VM, as the README's commands do, and boots
// both for real with apply (so the detached microvm host serves the
// endpoint, at mon's gateway). A Prometheus of the test's scrapes it too,
// and its API proves what needs a guest: each VM's CPU, memory, readiness
// and boot time; traffic a guest sends on its own TAP's counters and not
// the other's; a VMM killed as one restart; and the guest's journal,
// written before the kill, read from the host after it. mon's own
// Prometheus sees both VMs.
func TestGuests(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go", "prometheus", "journalctl", "sed", "cp")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if got := testenv.ReadmeCommands(string(readme), "### A monitoring VM"); !slices.Equal(got, readmeSteps) {
		t.Fatalf("the README's \"A monitoring VM\" has the commands\n%s\nthe test runs\n%s\nmake them agree", strings.Join(got, "\n"), strings.Join(readmeSteps, "\n"))
	}
	host := imagetest.Debian(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	os.WriteFile(file, []byte(fmt.Sprintf(guests, host.StateDir, testenv.RunDir(t, "mvm"))), 0o644)
	bin := testenv.Binaries(t)
	repo, _ := filepath.Abs("../..")
	var ns string // the sandbox's host, once there is one
	step := func(t *testing.T, i int) {
		t.Helper()
		line := strings.ReplaceAll(readmeSteps[i], "/etc/microvm", dir)
		cmd := exec.Command("sh", "-c", line)
		if ns != "" {
			cmd = sandbox.Command(ns, "sh", "-c", line)
		}
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "MICROVM_CONFIG="+file)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", readmeSteps[i], err, out)
		}
		t.Logf("$ %s\n%s", readmeSteps[i], out)
	}
	for i := range 4 { // cp, sed, printf, validate
		step(t, i)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range in.VMs {
		os.RemoveAll(vm.StateDir) // fresh VMs: their journals are this test's
	}
	// apply builds mon's image, but the sandbox has no Debian mirror to
	// reach: it is built here first, outside, once per version in the
	// tests' cache (the same code as apply's).
	imagetest.Declared(t, in)
	sb := sandboxtest.New(t, in)
	ns = sb.Host
	t.Cleanup(func() {
		for i := range in.VMs {
			supervise.StopDetached(&in.VMs[i], 90*time.Second)
		}
		if t.Failed() {
			for _, vm := range in.VMs {
				sup, _ := os.ReadFile(vm.SupervisorLog())
				t.Logf("%s supervisor log:\n%s\n%s console (end):\n%s", vm.Name, supervise.Tail(sup, 30), vm.Name, sandbox.Console(&vm, 20))
			}
			hl, _ := os.ReadFile(in.Host.HostLog())
			t.Logf("microvm host's log:\n%s", hl)
		}
	})
	began := time.Now()
	step(t, 4) // microvm apply
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"mon4", "mon"} {
		mustRun(t, sb.Host, bin, "ssh", "-f", file, "--wait", "8m", vm, "--", "true")
	}
	t.Logf("both guests answer SSH %s after apply", time.Since(began).Round(time.Second))
	prom := startPrometheus(t, sb.Host, "10.9.0.1:9753")
	ssh := func(t *testing.T, vm, script string) string {
		t.Helper()
		return mustRun(t, sb.Host, bin, "ssh", "-f", file, vm, "--", script)
	}

	t.Run("resources and readiness", func(t *testing.T) {
		for _, vm := range []string{"mon4", "mon"} {
			got := prom.families(t, fmt.Sprintf(`,vm=%q`, vm))
			for _, f := range []string{"microvm_vm_cpu_seconds_total", "microvm_vm_memory_resident_bytes", "microvm_vm_memory_guest_bytes",
				"microvm_vm_start_time_seconds", "microvm_vm_boot_ready_seconds", "microvm_vm_guest_ready", "microvm_vm_network_transmit_bytes_total",
				"microvm_vm_firewall_dropped_packets_total", "microvm_vm_vmm_restarts_total", "microvm_vm_disk_bytes"} {
				if !got[f] {
					t.Errorf("%s has no %s", vm, f)
				}
			}
			sel := fmt.Sprintf(`{vm=%q}`, vm)
			for _, c := range []struct {
				q      string
				lo, hi float64
			}{
				{`microvm_vm_state{state="running",vm="` + vm + `"}`, 1, 1},
				{"microvm_vm_guest_ready" + sel, 1, 1},
				{"microvm_vm_cpu_seconds_total" + sel, 1, 3600},                // a boot under TCG takes seconds of CPU
				{"microvm_vm_memory_resident_bytes" + sel, 50 << 20, 4 << 30},  // the guest's RAM it touched, QEMU, virtiofsd
				{"microvm_vm_memory_guest_bytes" + sel, 512 << 20, 1024 << 20}, // mon has 1024 MiB
				{"microvm_vm_boot_ready_seconds" + sel, 0.5, 600},
				{"time() - microvm_vm_start_time_seconds" + sel, 1, 3600},
			} {
				if v, ok := prom.value(t, c.q); !ok || v < c.lo || v > c.hi {
					t.Errorf("%s = %v (%v); want %v to %v", c.q, v, ok, c.lo, c.hi)
				}
			}
		}
		// The disk is measured in the background, again once a VM started.
		for _, vm := range []string{"mon4", "mon"} {
			prom.waitFor(t, fmt.Sprintf(`microvm_vm_disk_bytes{vm=%q}`, vm), func(v float64) bool { return v > 1<<20 && v < 1<<30 }, 60*time.Second)
		}
		// The CPU counter grows while the guest runs.
		a, _ := prom.value(t, `microvm_vm_cpu_seconds_total{vm="mon4"}`)
		prom.waitFor(t, `microvm_vm_cpu_seconds_total{vm="mon4"}`, func(v float64) bool { return v > a }, 30*time.Second)
	})

	t.Run("traffic shows on the sender's TAP only", func(t *testing.T) {
		tx := func(vm string) string { return fmt.Sprintf(`microvm_vm_network_transmit_bytes_total{vm=%q}`, vm) }
		rx := func(vm string) string { return fmt.Sprintf(`microvm_vm_network_receive_bytes_total{vm=%q}`, vm) }
		tx4, _ := prom.value(t, tx("mon4"))
		rx4, _ := prom.value(t, rx("mon4"))
		tx5, _ := prom.value(t, tx("mon"))
		rx5, _ := prom.value(t, rx("mon"))
		// 100 pings of 8000 bytes to the sandbox's internet server, and
		// their answers: 800 kB each way.
		ssh(t, "mon4", "ping -c 100 -i 0.02 -s 8000 -q 203.0.113.10")
		prom.waitFor(t, tx("mon4"), func(v float64) bool { return v >= tx4+800_000 }, 20*time.Second)
		prom.waitFor(t, rx("mon4"), func(v float64) bool { return v >= rx4+800_000 }, 20*time.Second)
		time.Sleep(2 * time.Second) // a scrape after the pings, for mon too
		// mon's own traffic meanwhile: its Prometheus' scrapes, a few kB.
		if v, _ := prom.value(t, tx("mon")); v-tx5 > 200_000 {
			t.Errorf("mon sent %v bytes while mon4 pinged", v-tx5)
		}
		if v, _ := prom.value(t, rx("mon")); v-rx5 > 200_000 {
			t.Errorf("mon received %v bytes while mon4 pinged", v-rx5)
		}
	})

	t.Run("a guest pinging a blocked VM", func(t *testing.T) {
		// mon4's opening to mon is tcp 9090 (its Prometheus): policy
		// routing lets the pair through, the table drops a ping, and
		// counts it. (Between VMs with no opening, routing drops first.)
		q := `microvm_vm_firewall_dropped_packets_total{vm="mon",direction="to"}`
		before, _ := prom.value(t, q)
		ssh(t, "mon4", "ping -c 20 -i 0.05 -W 1 -q 10.9.0.2 || true")
		prom.waitFor(t, q, func(v float64) bool { return v >= before+20 }, 20*time.Second)
	})

	token := fmt.Sprintf("montest-%d", time.Now().UnixNano())
	t.Run("a killed VMM is a restart", func(t *testing.T) {
		// Entries in the guest's journal before the kill: one from a unit,
		// one from a shell; synced to disk, as journald does every few
		// minutes by itself (an entry not synced yet dies with the VMM).
		ssh(t, "mon4", "printf '[Service]\\nType=oneshot\\nExecStart=/bin/echo "+token+"-unit\\n' > /etc/systemd/system/montest.service && "+
			"systemctl daemon-reload && systemctl start montest && logger -t montest-shell "+token+"-shell && journalctl --sync")
		// journalctl --sync returns before journald has written its
		// files out (it takes them offline in a thread of its own): the
		// kill waits until the host reads both entries there.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			all := mustRun(t, sb.Host, bin, "logs", "--guest", "--file", file, "mon4")
			if strings.Contains(all, token+"-unit") && strings.Contains(all, token+"-shell") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a minute after journalctl --sync, logs --guest lacks the entries:\n%s", supervise.Tail([]byte(all), 20))
			}
		}
		mon4, _ := in.VM("mon4")
		st, ok, err := runner.ReadStarted(mon4)
		if !ok || err != nil {
			t.Fatalf("no started record: %v", err)
		}
		if err := syscall.Kill(st.VMMPid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		prom.waitFor(t, `microvm_vm_vmm_restarts_total{vm="mon4"}`, func(v float64) bool { return v == 1 }, 60*time.Second)
		prom.waitFor(t, `microvm_vm_starts_total{vm="mon4"}`, func(v float64) bool { return v == 2 }, 60*time.Second)
		if v, _ := prom.value(t, `microvm_vm_vmm_restarts_total{vm="mon"}`); v != 0 {
			t.Errorf("mon's restarts: %v, want 0", v)
		}
		mustRun(t, sb.Host, bin, "ssh", "-f", file, "--wait", "8m", "mon4", "--", "true")
		prom.waitFor(t, `microvm_vm_guest_ready{vm="mon4"}`, func(v float64) bool { return v == 1 }, 60*time.Second)
	})

	t.Run("the guest's journal across the restart", func(t *testing.T) {
		// The second boot's first entries reach /var once its journal is
		// flushed there, early in its boot.
		var all string
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			all = mustRun(t, sb.Host, bin, "logs", "--guest", "--file", file, "mon4")
			if strings.Count(all, "\n-- Boot ") == 1 || time.Now().After(deadline) {
				break
			}
		}
		if n := strings.Count(all, "\n-- Boot "); n != 1 {
			t.Errorf("logs --guest shows %d boots, want both (one line between them)", n+1)
		}
		for _, want := range []string{token + "-unit", token + "-shell", "Started ssh.service"} {
			if !strings.Contains(all, want) {
				t.Errorf("logs --guest lacks %q", want)
			}
		}
		// The entries of the first boot come before the line, the
		// killed one's, and after it the new boot's.
		if i, j := strings.Index(all, token+"-shell"), strings.Index(all, "\n-- Boot "); i < 0 || j < i {
			t.Errorf("the entries of the first boot are not before the second's:\n%s", all)
		}
		unit := mustRun(t, sb.Host, bin, "logs", "--guest", "-u", "montest", "--file", file, "mon4")
		if !strings.Contains(unit, token+"-unit") || strings.Contains(unit, token+"-shell") || strings.Contains(unit, "ssh.service") {
			t.Errorf("logs --guest -u montest:\n%s", unit)
		}
		if tail := mustRun(t, sb.Host, bin, "logs", "--guest", "-n", "5", "--file", file, "mon4"); strings.Count(tail, "\n") > 5+4 {
			t.Errorf("logs --guest -n 5 printed:\n%s", tail)
		}
	})

	// The README's monitoring VM: its Prometheus scrapes the host at its
	// gateway and sees every VM, with the example's alerts loaded.
	t.Run("the monitoring VM", func(t *testing.T) {
		var out string
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(5 * time.Second) {
			out = ssh(t, "mon", `curl -s 'http://127.0.0.1:9090/api/v1/query?query=count(microvm_vm_info)'; echo; curl -s http://127.0.0.1:9090/api/v1/rules | head -c 300`)
			if strings.Contains(out, `"value":[`) && strings.Contains(out, `,"2"]`) || time.Now().After(deadline) {
				break
			}
		}
		if !strings.Contains(out, `,"2"]`) || !strings.Contains(out, `"name":"microvm"`) {
			t.Errorf("mon's Prometheus does not see both VMs, or lacks the example's alerts:\n%s", out)
		}
	})

	t.Run("top", func(t *testing.T) {
		var doc struct {
			VMs []struct {
				Name       string  `json:"name"`
				State      string  `json:"state"`
				Guest      string  `json:"guest"`
				CPUSeconds float64 `json:"cpu_seconds"`
				Memory     int64   `json:"memory_bytes"`
				Restarts   int     `json:"vmm_restarts"`
			} `json:"vms"`
		}
		out := mustRun(t, sb.Host, bin, "top", "--json", "-f", file)
		if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.VMs) != 2 {
			t.Fatalf("top --json: %v\n%s", err, out)
		}
		for _, r := range doc.VMs {
			if r.State != "running" || r.Guest != "ready" || r.CPUSeconds <= 0 || r.Memory <= 0 || r.Restarts != map[string]int{"mon4": 1, "mon": 0}[r.Name] {
				t.Errorf("top --json: %+v", r)
			}
		}
		screen := mustRun(t, sb.Host, bin, "top", "-n", "1", "-d", "1s", "-f", file)
		if !strings.Contains(screen, "2 running") || !strings.Contains(screen, "mon4") || !strings.Contains(screen, "CPU%") {
			t.Errorf("top -n 1:\n%s", screen)
		}
	})

	// With the VM stopped, the program's reader and journalctl read the
	// same entries from the files the guest wrote.
	t.Run("the journal as journalctl reads it", func(t *testing.T) {
		mustRun(t, sb.Host, bin, "down", "-f", file, "mon4")
		mon4, _ := in.VM("mon4")
		jdir := filepath.Join(mon4.VarDir, "log", "journal")
		out, err := exec.Command("journalctl", "--directory="+jdir, "-o", "json", "--output-fields=MESSAGE", "--no-pager").Output()
		if err != nil {
			t.Fatalf("journalctl: %v", err)
		}
		var theirs []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var e struct {
				Realtime string `json:"__REALTIME_TIMESTAMP"`
				Message  any    `json:"MESSAGE"`
			}
			if json.Unmarshal([]byte(line), &e) == nil {
				msg, _ := e.Message.(string) // binary messages are arrays of bytes
				theirs = append(theirs, e.Realtime+" "+msg)
			}
		}
		root, err := safedir.Open(jdir)
		if err != nil {
			t.Fatal(err)
		}
		d := journal.OpenDir(root)
		defer d.Close()
		var ours []string
		if err := d.Poll(func(e journal.Entry) {
			ours = append(ours, fmt.Sprint(e.Realtime.UnixMicro())+" "+e.Field("MESSAGE"))
		}); err != nil {
			t.Error(err)
		}
		slices.Sort(theirs)
		slices.Sort(ours)
		if len(ours) < 100 || !slices.Equal(ours, theirs) {
			t.Errorf("the program reads %d entries, journalctl %d; first difference: %s", len(ours), len(theirs), firstDiff(ours, theirs))
		}
	})
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("%q against %q", a[i], b[i])
		}
	}
	return "one is longer"
}
