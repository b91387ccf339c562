package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// model writes an infra.toml of VMs vm1..vmN with private state and run
// directories, and loads it.
func model(t *testing.T, n int) (string, *config.Infra) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\n", dir+"/state", dir+"/run")
	for i := 1; i <= n; i++ {
		src += fmt.Sprintf("[vm.vm%d]\nsubnet = \"10.%d.%d.0/24\"\n", i, i/256, i%256)
	}
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return file, in
}

// TestRead reads a sample of three VMs made of real pieces: vm1 runs (a
// supervisor with children, as its started record says, a TAP, drop
// counters in the loaded table), vm2's supervisor holds its run lock but
// has started no VMM yet, vm3 is stopped.
func TestRead(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft", "sh")
	file, in := model(t, 3)
	vm1, vm2 := &in.VMs[0], &in.VMs[1]

	// vm1's "supervisor": a shell with a VMM that burns CPU and a daemon.
	sup := exec.Command("sh", "-c", "sleep 60 & while :; do :; done & wait")
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { exec.Command("pkill", "-P", fmt.Sprint(sup.Process.Pid)).Run(); sup.Process.Kill(); sup.Wait() }()
	var kids []int
	for deadline := time.Now().Add(5 * time.Second); len(kids) < 2 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pt, err := readProcs("/proc")
		if err != nil {
			t.Fatal(err)
		}
		kids = pt.children[sup.Process.Pid]
	}
	if len(kids) < 2 {
		t.Fatalf("the supervisor's children did not start: %v", kids)
	}
	run, _ := proc.Of(sup.Process.Pid)
	vmm, _ := proc.Of(kids[0])
	began := time.Now().Add(-time.Minute).UTC()
	ready := began.Add(30 * time.Second)
	d, err := supervise.OpenRunDir(vm1)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(runner.Started{Settings: map[string]string{"memory": "512", "hypervisor": "qemu"}, Time: began,
		VMMPid: vmm.Pid, VMMStart: vmm.Start, RunPid: run.Pid, RunStart: run.Start, Ready: &ready})
	if err := d.WriteFile("started.json", rec, 0o644); err != nil {
		t.Fatal(err)
	}
	boots, _ := json.Marshal(runner.Boots{Starts: 2, Restarts: 1, Up: true, LastReady: 30 * time.Second})
	if err := d.WriteFile("boots.json", boots, 0o644); err != nil {
		t.Fatal(err)
	}
	d.Close()
	// vm2's supervisor: the run lock held, no started record.
	d2, err := supervise.OpenRunDir(vm2)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := d2.Lock(filepath.Base(vm2.RunLock()), false)
	d2.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()

	ns := testenv.NetNS(t)
	// Some CPU time for the busy child (on a busy machine, longer).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		pt, _ := readProcs("/proc")
		if pt.cpu(pt.tree(run.Pid, run.Start)) >= 100*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the busy child took less than 100 ms of CPU in 30 s")
		}
	}
	var s Sample
	err = sandbox.Do(ns, func() error {
		if out, err := exec.Command("ip", "tuntap", "add", "dev", vm1.TAP, "mode", "tap").CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w", out, err)
		}
		if err := (&firewall.Replace{Ruleset: firewall.Render(in, nil), Why: "create"}).Apply(); err != nil {
			return err
		}
		r := &Reader{File: file}
		s = r.Read()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"config", "links", "firewall", "processes"} {
		if s.Errors[src] != nil {
			t.Errorf("%s: %v", src, s.Errors[src])
		}
	}
	if len(s.VMs) != 3 {
		t.Fatalf("got %d VMs", len(s.VMs))
	}
	got1, got2, got3 := s.VMs[0], s.VMs[1], s.VMs[2]
	if got1.State != lifecycle.Running || !got1.GuestReady || !got1.Started.Equal(began) || got1.Hypervisor != "qemu" || got1.GuestMemory != 512<<20 {
		t.Errorf("vm1: %+v", got1)
	}
	if !got1.HasResources || got1.Processes != 3 || got1.CPU < 100*time.Millisecond || got1.Memory < 100<<10 {
		t.Errorf("vm1's processes: %d, CPU %s, memory %d", got1.Processes, got1.CPU, got1.Memory)
	}
	if got1.Boots.Restarts != 1 || got1.Boots.LastReady != 30*time.Second {
		t.Errorf("vm1's boots: %+v", got1.Boots)
	}
	if !got1.HasTraffic || got2.HasTraffic {
		t.Errorf("TAPs: vm1 %v, vm2 %v; want only vm1's (only its TAP exists)", got1.HasTraffic, got2.HasTraffic)
	}
	if !s.Host.TablePresent || !got1.HasDrops || !got3.HasDrops {
		t.Errorf("firewall: table %v, vm1's counters %v, vm3's %v", s.Host.TablePresent, got1.HasDrops, got3.HasDrops)
	}
	if got2.State != lifecycle.Starting || got3.State != lifecycle.Stopped {
		t.Errorf("vm2 %s, vm3 %s; want starting (its run lock is held) and stopped", got2.State, got3.State)
	}
	if got2.HasResources || got3.HasResources {
		t.Error("a VM that does not run has resources")
	}

	// A VM with a cgroup is measured there (the hook the limits plug in).
	sandbox.Do(ns, func() error {
		s = (&Reader{File: file, Cgroups: func(vm *config.VM) (Cgroup, bool) { return fakeGroup{}, vm.Name == "vm1" }}).Read()
		return nil
	})
	if g := s.VMs[0]; !g.HasResources || g.CPU != 7*time.Second || g.Memory != 123<<20 || g.Processes != 0 {
		t.Errorf("vm1 with a cgroup: CPU %s, memory %d, %d processes", g.CPU, g.Memory, g.Processes)
	}

	// Without a table: present is false, and no VM has counters.
	sandbox.Do(ns, func() error {
		exec.Command("nft", "delete", "table", "inet", "microvm").Run()
		s = (&Reader{File: file}).Read()
		return nil
	})
	if s.Host.TablePresent || !s.Host.TableRead || s.VMs[0].HasDrops || s.Errors["firewall"] != nil {
		t.Errorf("without the table: present %v, read %v, vm1's counters %v, %v", s.Host.TablePresent, s.Host.TableRead, s.VMs[0].HasDrops, s.Errors["firewall"])
	}
}

// TestModelReload: the file is read again when it changes; a file that
// no longer parses keeps the last good model, with the error.
func TestModelReload(t *testing.T) {
	file, _ := model(t, 2)
	r := &Reader{File: file}
	in, err := r.Model()
	if err != nil || len(in.VMs) != 2 {
		t.Fatalf("%v %v", in, err)
	}
	src, _ := os.ReadFile(file)
	os.WriteFile(file, append(src, "[vm.vm9]\nsubnet = \"10.9.0.0/24\"\n"...), 0o644)
	if in, err = r.Model(); err != nil || len(in.VMs) != 3 {
		t.Errorf("after adding a VM: %d VMs, %v", len(in.VMs), err)
	}
	os.WriteFile(file, []byte("[host\n"), 0o644)
	if in, err = r.Model(); err == nil || in == nil || len(in.VMs) != 3 {
		t.Errorf("after breaking the file: %v, %v; want the last model and an error", in, err)
	}
}

// TestHeldLocks: a file locked with flock, as a supervisor holds its run
// lock, is seen in /proc/locks; one no longer locked is not.
func TestHeldLocks(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "run.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, ok := fileID(f.Name())
	if !ok {
		t.Fatal("no file ID")
	}
	if heldLocks("/proc")[id] {
		t.Fatal("held before it is locked")
	}
	if err := flock(f); err != nil {
		t.Fatal(err)
	}
	if !heldLocks("/proc")[id] {
		t.Error("a held flock is not seen")
	}
}

// fakeGroup is a cgroup that says what it is told (the real reading is
// TestCgroupDirs').
type fakeGroup struct{}

func (fakeGroup) Usage() (time.Duration, int64, error) { return 7 * time.Second, 123 << 20, nil }

// TestLinkTraffic: the counters read from the netlink dump are the
// kernel's, as /sys shows them, seen from the other end: what a TAP sends
// is what its guest receives.
func TestLinkTraffic(t *testing.T) {
	testenv.NeedCommands(t, "ip", "ping")
	a, b := testenv.NetNS(t), testenv.NetNS(t)
	for _, ns := range []string{a, b} { // no IPv6 chatter between the two readings
		sandbox.Command(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1").Run()
	}
	for _, args := range [][]string{
		{"-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b},
		{"-n", a, "addr", "add", "10.99.0.1/24", "dev", "v0"}, {"-n", a, "link", "set", "v0", "up"},
		{"-n", b, "addr", "add", "10.99.0.2/24", "dev", "v1"}, {"-n", b, "link", "set", "v1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %s %v", args, out, err)
		}
	}
	if out, err := sandbox.Command(a, "ping", "-c", "5", "-i", "0.2", "-s", "1000", "10.99.0.2").CombinedOutput(); err != nil {
		t.Fatalf("ping: %s %v", out, err)
	}
	var got map[string]Traffic
	if err := sandbox.Do(a, func() error {
		var err error
		got, err = linkTraffic(map[string]bool{"v0": true, "lo": false})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sys := func(name string) uint64 {
		// ip netns exec mounts the namespace's own sysfs (sandbox.Command
		// keeps the host's, for its cgroups).
		out, err := exec.Command("ip", "netns", "exec", a, "cat", "/sys/class/net/v0/statistics/"+name).Output()
		if err != nil {
			t.Fatal(err)
		}
		var v uint64
		fmt.Sscan(string(out), &v)
		return v
	}
	v0, ok := got["v0"]
	if !ok || len(got) != 1 {
		t.Fatalf("got %v; want v0 only", got)
	}
	if v0.RxBytes != sys("tx_bytes") || v0.TxBytes != sys("rx_bytes") || v0.RxPackets != sys("tx_packets") || v0.TxPackets != sys("rx_packets") || v0.RxBytes < 5*1000 {
		t.Errorf("v0: %+v; /sys: tx %d bytes %d packets, rx %d bytes %d packets", v0, sys("tx_bytes"), sys("tx_packets"), sys("rx_bytes"), sys("rx_packets"))
	}
}
