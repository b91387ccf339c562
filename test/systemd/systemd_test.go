// Package systemd runs the program under a real systemd, as on the design's
// hosts (tier 3 of DESIGN.md). This kind of machine has no systemd as PID 1,
// so the test boots one with systemd-nspawn, on an overlay of the machine's
// own root, in a sandbox network namespace (see container). Inside, with a
// real microVM under QEMU (TCG), a tailscaled that refuses every change
// (the fake), and a namespace of the test's standing in for a second VM:
//
//   - microvm apply installs the units, and systemctl and journalctl show
//     the VM as the design says;
//   - a reload of the distribution's firewall (which flushes the ruleset),
//     nft flush ruleset and a hand edit are repaired within a second, and
//     floods across them show that nothing got through once the watcher
//     had set the VM ports down;
//   - systemctl stop shuts the guest down cleanly before its virtiofs
//     daemons, with what it wrote on the host's disk; systemctl start
//     brings it back;
//   - after systemctl reboot and a new boot in a fresh network namespace,
//     with nobody typing a command, the host part is back, the VM answers
//     SSH with its /var, and isolation holds.
package systemd

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/tailscale/tailscaletest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// Inside the container.
const (
	file      = "/etc/microvm/infra.toml"
	bindir    = "/opt/microvm"
	tsSocket  = "/srv/fake-tailscale/ts.sock"
	hostState = "/run/microvm/host.json"
)

// infra is the container's infra.toml: vm1 a real VM, vm2 a network only
// (not started), where a namespace of the test's plugs in.
var infra = `[host]
uplink = "eth0"
accel = "tcg"

[host.tailscale]
enabled = true
socket = "` + tsSocket + `"

[defaults]
hypervisor = "qemu"
vcpu = 1
memory = 512

[vm.vm1]
subnet = "10.1.0.0/24"

[vm.vm2]
subnet = "10.2.0.0/24"
autostart = false
`

func TestSystemd(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "systemd-nspawn", "nsenter", "mount", "ip", "nft", "qemu-system-x86_64", "go")
	img := imagetest.Debian(t)
	bin := testenv.Binaries(t)
	began := time.Now()

	in, err := config.Parse("infra.toml", []byte(infra))
	if err != nil {
		t.Fatal(err)
	}
	vm1, _ := in.VM("vm1")
	vm2, _ := in.VM("vm2")
	// The sandbox's model: the stand-in is for vm2 alone.
	standIn := *in
	standIn.VMs = []config.VM{*vm2}

	root := overlay(t)
	// zfs-fuse is enabled on machines with the zfs-fuse package: its
	// daemon would import, through the lower layer, the pools of this
	// machine's tests. The container has no /dev/fuse anyway.
	os.Symlink("/dev/null", filepath.Join(root, "etc/systemd/system/zfs-fuse.service"))
	// A machine ID of its own, the same at each boot, and a journal on
	// disk: journalctl -b -1 shows the boot before the reboot.
	id := make([]byte, 16)
	rand.Read(id)
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "var/log/journal"), 0o755)
	os.MkdirAll(filepath.Join(root, filepath.Dir(file)), 0o755)
	if err := os.WriteFile(filepath.Join(root, file), []byte(infra), 0o644); err != nil {
		t.Fatal(err)
	}
	tsDir := testenv.ShortDir(t)
	tailscaled := tailscaletest.Start(t, filepath.Join(tsDir, "ts.sock"), "Running", nil, nil)
	tailscaled.Refuse("cannot save the settings: read-only file system")
	logs := t.TempDir()
	console := filepath.Join(logs, "container-console.log")
	binds := []string{filepath.Dir(bin) + ":" + bindir, img.ImageDir(imagetest.Name) + ":" + in.Host.ImageDir(imagetest.Name), tsDir + ":" + filepath.Dir(tsSocket) + ":rw"}

	sb := newSandbox(t, &standIn)
	c := boot(t, root, sb.Host, console, binds...)
	defer func() {
		if t.Failed() {
			for _, args := range [][]string{{"journalctl", "-u", "microvm-host", "-u", "microvm@vm1", "--no-pager", "-n", "60"}, {"tail", "-n", "30", vm1.ConsoleLog()}} {
				out, _ := c.run(args...)
				t.Logf("%s:\n%s", strings.Join(args, " "), out)
			}
		}
	}()
	mvm := func(args ...string) (string, error) { return c.run(append([]string{bindir + "/microvm"}, args...)...) }

	// apply: the host part, the units, vm1. tailscaled refuses the routes:
	// apply says so and goes on, and exits 1 once everything else is done.
	out, err := mvm("apply", "-f", file)
	t.Logf("microvm apply:\n%s", out)
	for _, want := range []string{"install microvm-host.service, microvm@.service, microvm@vm1.service.d/limits.conf, microvm@vm2.service.d/limits.conf, microvms.target in /etc/systemd/system", "systemctl start microvm-host.service", "microvm up vm1",
		"tailscale --socket=" + tsSocket + " set --advertise-routes=10.1.0.0/24,10.2.0.0/24", "warning: setting tailscaled's advertised routes", "1 change(s) failed, the rest was applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply's output lacks %q", want)
		}
	}
	if err == nil {
		t.Error("apply exited 0 although tailscaled refused the routes")
	}
	login(t, c, began)
	stand := standIns(t, sb)

	t.Run("systemctl and journalctl", func(t *testing.T) {
		for unit, want := range map[string]string{"microvm@vm1": "Active: active (running)", "microvm-host": "Active: active (running)"} {
			if out, _ := c.run("systemctl", "status", "--no-pager", unit); !strings.Contains(out, want) {
				t.Errorf("systemctl status %s:\n%s", unit, out)
			}
		}
		for _, unit := range []string{"microvm@vm1", "microvm-host", "microvms.target"} {
			if out, _ := c.run("systemctl", "is-enabled", unit); strings.TrimSpace(out) != "enabled" {
				t.Errorf("%s is %q, want enabled (so it starts at boot)", unit, strings.TrimSpace(out))
			}
		}
		out := c.must("journalctl", "-u", "microvm@vm1", "--no-pager")
		for _, want := range []string{"vm1: qemu started (pid ", "warning: the host part is not fully applied; vm1 does not need the rest", "tailscale --socket=" + tsSocket + " set --advertise-routes"} {
			if !strings.Contains(out, want) {
				t.Errorf("journalctl -u microvm@vm1 lacks %q:\n%s", want, out)
			}
		}
		if out := c.must("journalctl", "-u", "microvm-host", "--no-pager"); !strings.Contains(out, "host part of "+file+" applied; keeping table inet microvm") {
			t.Errorf("journalctl -u microvm-host:\n%s", out)
		}
	})

	// The VM's limits, a drop-in of its unit: what systemd 252 takes of
	// them, and what the kernel has in the unit's cgroup. On the machines
	// the tests run on (cgroup v1 controllers, systemd in a container)
	// see limitsUnderSystemd.
	t.Run("limits", func(t *testing.T) { limitsUnderSystemd(t, c, vm1, mvm) })

	t.Run("the firewall heals", func(t *testing.T) {
		events := []struct {
			name, cmd, want string
		}{
			{"systemctl restart nftables", "systemctl restart nftables.service", "table inet microvm is missing"},
			{"nft flush ruleset", "nft flush ruleset", "table inet microvm is missing"},
			{"a drop turned into an accept", "", "changed (drop -> accept)"},
		}
		for _, ev := range events {
			t.Run(ev.name, func(t *testing.T) {
				cmd := ev.cmd
				if cmd == "" {
					listing := c.must("nft", "-a", "list", "chain", "inet", "microvm", "forward")
					h, rule, ok := sandboxtest.DropToAccept(listing)
					if !ok {
						t.Fatalf("no rule that drops in chain forward:\n%s", listing)
					}
					cmd = "nft 'replace rule inet microvm forward handle " + h + " " + strings.ReplaceAll(rule, "'", "") + "'"
				}
				healed(t, c, stand, cmd, ev.want)
				stand.isolated(t)
			})
		}
		guestIsolated(t, c)
		if out := c.must("journalctl", "-u", "microvm-host", "--no-pager"); !strings.Contains(out, "firewall: table inet microvm is missing; restored table inet microvm in ") {
			t.Errorf("the journal does not show the repairs:\n%s", out)
		}
		if out, _ := mvm("status", "--host", "-f", file); !strings.Contains(out, "firewall: kept by microvm-host.service") || !strings.Contains(out, "repairs; the last ") {
			t.Errorf("status --host:\n%s", out)
		}
	})

	// The host shuts down: each guest first, cleanly, before its virtiofs
	// daemons and before the network goes; then it boots again, on the
	// same disk, with a fresh network: bridges, TAPs and the table are
	// gone, as after a host's reboot. Nobody types a command.
	top := t
	t.Run("reboot", func(t *testing.T) {
		c.must(bindir+"/microvm", "ssh", "-f", file, "vm1", "--", "echo before-reboot > /var/marker-reboot && sync")
		c.must("systemctl", "reboot")
		rebooted := time.Now()
		if code := c.wait(3 * time.Minute); code != 133 {
			t.Fatalf("systemd-nspawn exited with %d after systemctl reboot, want 133", code)
		}
		t.Logf("the container shut down in %s", time.Since(rebooted).Round(100*time.Millisecond))
		sb.Close()
		sb = newSandbox(top, &standIn)
		c = boot(top, root, sb.Host, console, binds...)
		login(t, c, rebooted)
		if out := c.must(bindir+"/microvm", "ssh", "-f", file, "vm1", "--", "cat /var/marker-reboot"); out != "before-reboot\n" {
			t.Errorf("after the reboot, vm1's /var/marker-reboot = %q", out)
		}
		journal := c.must("journalctl", "-b", "-1", "-u", "microvm@vm1", "--no-pager")
		cleanStop(t, journal)
		if out, _ := mvm("plan", "--host-only", "-f", file); !strings.Contains(out, "tailscale") || strings.Contains(out, "nft -f") || strings.Contains(out, "ip link") {
			t.Errorf("after the reboot, the host part is not back; plan:\n%s", out)
		}
		stand = standIns(top, sb)
		stand.isolated(t)
		guestIsolated(t, c)
	})

	t.Run("systemctl stop and start", func(t *testing.T) {
		c.must(bindir+"/microvm", "ssh", "-f", file, "vm1", "--", "echo before-stop > /var/marker-stop && sync")
		stopped := time.Now()
		c.must("systemctl", "stop", "microvm@vm1")
		t.Logf("systemctl stop took %s", time.Since(stopped).Round(100*time.Millisecond))
		cleanStop(t, c.must("journalctl", "-u", "microvm@vm1", "--no-pager", "-b", "0"))
		if out := c.must("cat", vm1.ConsoleLog()); !strings.Contains(out, "systemd-shutdown[1]: All filesystems unmounted") || strings.Contains(out, "Input/output error") {
			t.Errorf("no clean shutdown in the guest's console:\n%s", supervise.Tail([]byte(out), 20))
		}
		if out, _ := c.run("pgrep", "-f", "virtiofsd"); strings.TrimSpace(out) != "" {
			t.Errorf("virtiofsd still runs after the stop: %s", out)
		}
		if b, err := os.ReadFile(filepath.Join(root, vm1.VarDir, "marker-stop")); err != nil || string(b) != "before-stop\n" {
			t.Errorf("what the guest wrote before the stop is not on the host's disk: %q %v", b, err)
		}
		// The guest boots as after the reboot above; here it is enough
		// that its VMM runs again.
		c.must("systemctl", "start", "microvm@vm1")
		for started := time.Now(); ; {
			out, _ := mvm("status", "--json", "-f", file, "vm1")
			if strings.Contains(out, `"state": "running"`) {
				t.Logf("vm1's VMM runs again %s after systemctl start", time.Since(started).Round(100*time.Millisecond))
				break
			}
			if time.Since(started) > time.Minute {
				t.Fatalf("a minute after systemctl start, status:\n%s", out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("poweroff", func(t *testing.T) {
		c.must("systemctl", "poweroff")
		if code := c.wait(3 * time.Minute); code != 0 {
			t.Errorf("systemd-nspawn exited with %d after systemctl poweroff, want 0", code)
		}
	})
	t.Logf("test/systemd took %s", time.Since(began).Round(time.Second))
}

// healed runs cmd in the container, which flushes or edits the table,
// with floods from the stand-in along the paths that must stay closed,
// and checks that the watcher repaired the table within a second, saw
// want, and that no probe got through but in the moment between the
// change and the VM ports going down.
func healed(t *testing.T, c *container, stand *stands, cmd, want string) {
	t.Helper()
	before := hostStateOf(t, c)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	answered := make([][]time.Time, len(stand.closed))
	for i, p := range stand.closed {
		wg.Add(1)
		go func() { defer wg.Done(); answered[i] = sandboxtest.Flood(t, p.from, p.to, time.Minute, stop) }()
	}
	time.Sleep(100 * time.Millisecond)
	edited := time.Now()
	out, err := c.run("sh", "-c", cmd)
	var after hostpart.State
	for err == nil {
		after = hostStateOf(t, c)
		if after.Repairs > before.Repairs && time.Since(edited) > 500*time.Millisecond || time.Since(edited) > 5*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	repairs := after.Recent[max(0, len(after.Recent)-(after.Repairs-before.Repairs)):]
	if len(repairs) == 0 {
		t.Fatalf("no repair 5 s after %s", cmd)
	}
	for _, r := range repairs {
		t.Logf("repair: %s; ports %v down %s after it was heard, all done in %d ms", strings.Join(r.Changes, "; "), r.Ports, r.Closed.Sub(r.Heard), r.Millis)
		if r.Millis > 1000 || r.Err != "" {
			t.Errorf("repair in %d ms, error %q; want within a second", r.Millis, r.Err)
		}
	}
	if got := strings.Join(repairs[0].Changes, "; "); !strings.Contains(got, want) {
		t.Errorf("the watcher saw %q, want %q", got, want)
	}
	for i, p := range stand.closed {
		for _, sent := range answered[i] {
			in := false
			for _, r := range repairs {
				in = in || sent.After(r.Heard.Add(-50*time.Millisecond)) && sent.Before(r.Closed)
			}
			if !in {
				t.Errorf("%s: a probe sent at %s got through, outside the moment between a change and the ports going down", p.name, sent.Format(time.StampMicro))
			}
		}
		if n := len(answered[i]); n > 0 {
			t.Logf("%s: %d probes sent in that moment got through", p.name, n)
		}
	}
}

// cleanStop checks a supervisor's journal for a clean stop: the guest shut
// down, then its virtiofs daemons stopped, and nothing was killed.
func cleanStop(t *testing.T, journal string) {
	t.Helper()
	order(t, journal, "vm1: shutting the guest down", "vm1: the guest shut down in ", "vm1: stopped")
	if strings.Contains(journal, "SIGKILL") {
		t.Errorf("the VMM was killed:\n%s", supervise.Tail([]byte(journal), 15))
	}
}

// guestIsolated checks from inside vm1, in one SSH session (a guest under
// emulation is slow to log in to), that it reaches the internet and not
// vm2's stand-in, by ping or TCP.
func guestIsolated(t *testing.T, c *container) {
	t.Helper()
	script := fmt.Sprintf(`r=""
timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d && head -n1 <&3' >/dev/null 2>&1 && r="$r internet"
ping -c 2 -W 1 10.2.0.2 >/dev/null 2>&1 && r="$r vm2-ping"
timeout 3 bash -c 'exec 3<>/dev/tcp/10.2.0.2/%d' >/dev/null 2>&1 && r="$r vm2-tcp"
echo "reached:$r"`, sandbox.InternetAddr, sandbox.Port, sandbox.Port)
	out, err := c.run(bindir+"/microvm", "ssh", "-f", file, "vm1", "--", script)
	if got := strings.TrimSpace(out); err != nil || got != "reached: internet" {
		t.Errorf("from inside vm1: %q, %v; want the internet and not vm2", got, err)
	}
}

func newSandbox(t *testing.T, in *config.Infra) *sandbox.Sandbox {
	t.Helper()
	sb := sandboxtest.New(t, in)
	return sb
}

// login waits for vm1's SSH, from inside the container, as a person would.
func login(t *testing.T, c *container, since time.Time) {
	t.Helper()
	if out, err := c.run(bindir+"/microvm", "ssh", "-f", file, "--wait", "6m", "vm1", "--", "true"); err != nil {
		t.Fatalf("vm1 does not answer SSH: %v\n%s", err, out)
	}
	t.Logf("vm1 answers SSH %s after start", time.Since(since).Round(time.Second))
}

// order checks that the lines with want appear in text in this order.
func order(t *testing.T, text string, want ...string) {
	t.Helper()
	at := 0
	for _, w := range want {
		i := strings.Index(text[at:], w)
		if i < 0 {
			t.Errorf("%q is missing, or not after %q:\n%s", w, want[0], supervise.Tail([]byte(text), 20))
			return
		}
		at += i + len(w)
	}
}

func hostStateOf(t *testing.T, c *container) hostpart.State {
	t.Helper()
	var st hostpart.State
	if err := json.Unmarshal([]byte(c.must("cat", hostState)), &st); err != nil {
		t.Fatalf("reading %s: %v", hostState, err)
	}
	return st
}

// stands are the stand-in for vm2 and the paths from it that must stay
// closed: to vm1 (ICMP, which the guest's kernel answers) and to the
// host's gateway address (UDP, to an echo server in the container's
// network namespace).
type stands struct {
	sb     *sandbox.Sandbox
	closed []path
}

type path struct {
	name string
	from string
	to   netip.AddrPort
}

func standIns(t *testing.T, sb *sandbox.Sandbox) *stands {
	t.Helper()
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	ns := sb.VMs["vm2"]
	sandboxtest.Echo(t, sb.Host, "")
	sandboxtest.Echo(t, ns, "")
	if err := sandbox.Serve(sb.Internet, sandbox.Port); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.Serve(ns, sandbox.Port); err != nil {
		t.Fatal(err)
	}
	return &stands{sb: sb, closed: []path{
		{"vm2 -> vm1 (ping)", ns, netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), 0)},
		{"vm2 -> the host (udp)", ns, netip.AddrPortFrom(netip.MustParseAddr("10.2.0.1"), sandboxtest.EchoPort)},
	}}
}

// isolated checks, from the stand-in, that vm2 does not reach vm1 and does
// reach the internet.
func (s *stands) isolated(t *testing.T) {
	t.Helper()
	ns := s.sb.VMs["vm2"]
	if r := sandbox.Ping(ns, netip.MustParseAddr("10.1.0.2")); r.Reached {
		t.Error("vm2 reaches vm1 with ping")
	}
	if r := sandbox.TCP(ns, netip.AddrPortFrom(sandbox.InternetAddr, sandbox.Port)); !r.Reached {
		t.Errorf("vm2 does not reach the internet: %v", r.Err)
	}
}

// limitsUnderSystemd checks that systemd read vm's limits from its drop-in
// (systemctl show), and reports what the kernel applied in the unit's
// cgroup, as info reads it.
func limitsUnderSystemd(t *testing.T, c *container, vm *config.VM, mvm func(...string) (string, error)) {
	props := c.must("systemctl", "show", "-p", "MemoryMax,MemorySwapMax,TasksMax,CPUWeight,CPUQuotaPerSecUSec,IOWeight,OOMPolicy,ControlGroup,DropInPaths", "microvm@"+vm.Name)
	t.Logf("systemctl show microvm@%s:\n%s", vm.Name, props)
	for _, want := range []string{
		fmt.Sprintf("MemoryMax=%d\n", int64(vm.Limits.MemoryMiB)<<20),
		"MemorySwapMax=0\n",
		fmt.Sprintf("TasksMax=%d\n", vm.Limits.Pids),
		fmt.Sprintf("CPUWeight=%d\n", vm.Limits.CPUWeight),
		fmt.Sprintf("IOWeight=%d\n", vm.Limits.IOWeight),
		"OOMPolicy=continue\n",
		"/etc/systemd/system/microvm@" + vm.Name + ".service.d/limits.conf",
	} {
		if !strings.Contains(props, want) {
			t.Errorf("systemctl show lacks %q", strings.TrimSpace(want))
		}
	}
	out, err := mvm("info", "-f", file, vm.Name)
	t.Logf("microvm info %s: %v\n%s", vm.Name, err, out)
	if !strings.Contains(out, "microvm@"+vm.Name+".service") {
		t.Errorf("info does not name the unit's cgroup")
	}
}
