package lifecycle

// Limits (issue 20), proven on the running VMs of TestLifecycle, sharing
// its boots: each VM's processes in a cgroup of their own with its limits;
// a fork past pids.max refused; a VMM over its memory limit killed, said
// so and restarted; a supervisor killed leaving nothing behind; the
// console log bounded; a guest that fills its disk stopped at its quota.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// vmCgroup is vm's cgroup as its keeper recorded it.
func vmCgroup(t *testing.T, vm *config.VM) *cgroup.Group {
	t.Helper()
	g, ok := supervise.Cgroup(vm)
	if !ok {
		t.Fatalf("%s: no cgroup recorded in %s", vm.Name, vm.CgroupRecord())
	}
	return g
}

// started waits for vm's started record with a VMM other than not (0:
// any), and returns it.
func started(t *testing.T, vm *config.VM, not int, within time.Duration) runner.Started {
	t.Helper()
	for began := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if s, ok, _ := runner.ReadStarted(vm); ok && s.VMMPid != not && s.VMM().Alive() && s.Run().Alive() {
			return s
		}
		if time.Since(began) > within {
			t.Fatalf("%s: no VMM running %s after", vm.Name, within)
		}
	}
}

// checkCgroup: every process of vm (its supervisor, three virtiofsd, its
// VMM) is in its cgroup, which has its limits.
func checkCgroup(t *testing.T, vm *config.VM) {
	g := vmCgroup(t, vm)
	st := started(t, vm, 0, time.Minute)
	procs, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{st.VMMPid, st.RunPid} {
		if !slices.Contains(procs, pid) {
			t.Errorf("%s: process %d is not in its cgroup %s (%v)", vm.Name, pid, g, procs)
		}
	}
	// The supervisor, the VMM, and each virtiofsd (two processes in its
	// sandbox: a parent waiting outside and the daemon inside).
	if len(procs) < 5 {
		t.Errorf("%s: %d processes in its cgroup, want the supervisor, the VMM and its daemons: %v", vm.Name, len(procs), procs)
	}
	u, err := g.Use()
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryMax != int64(vm.Limits.MemoryMiB)<<20 || u.PidsMax != vm.Limits.Pids {
		t.Errorf("%s: cgroup limits memory %d, pids %d; want %d MiB, %d", vm.Name, u.MemoryMax, u.PidsMax, vm.Limits.MemoryMiB, vm.Limits.Pids)
	}
	t.Logf("%s: cgroup %s: %d processes, memory %d of %d MiB, %d of %d pids", vm.Name, g, len(procs), u.MemoryBytes>>20, u.MemoryMax>>20, u.Pids, u.PidsMax)
}

// forkPastPids starts a shell in vm's cgroup, as the VM's own processes
// are, that forks until it cannot: the kernel refuses its fork at
// pids.max (pids.events counts it). Its processes are killed at once,
// before the VMM misses a thread it wants.
func forkPastPids(t *testing.T, vm *config.VM) {
	g := vmCgroup(t, vm)
	events := func() int {
		b, _ := os.ReadFile(filepath.Join(g.Dir("pids"), "pids.events"))
		n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(b), "max ")))
		return n
	}
	before := events()
	u, err := g.Use()
	if err != nil {
		t.Fatal(err)
	}
	sh := exec.Command("sh", "-c", `read go; n=0; while [ $n -lt 100000 ]; do sleep 600 >/dev/null 2>&1 & echo $!; n=$((n+1)); done`)
	in, _ := sh.StdinPipe()
	out, _ := sh.StdoutPipe()
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(sh.Process.Pid); err != nil {
		t.Fatal(err)
	}
	in.Close()
	var kids []int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			kids = append(kids, pid)
		}
	}
	full, _ := g.Use()
	for _, pid := range kids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	err = sh.Wait()
	t.Logf("%s: the shell forked %d children beside the VM's %d pids and stopped (%v); the cgroup then held %d of %d; forks refused at pids.max: %d", vm.Name, len(kids), u.Pids, err, full.Pids, full.PidsMax, events()-before)
	if len(kids) >= 100000 || events() <= before {
		t.Errorf("%s: the shell forked %d children and pids.events counts no refusal (%d, before %d)", vm.Name, len(kids), events(), before)
	}
	if full.PidsMax != vm.Limits.Pids || full.Pids > full.PidsMax {
		t.Errorf("%s: %d pids in the cgroup, pids.max %d; want at most %d", vm.Name, full.Pids, full.PidsMax, vm.Limits.Pids)
	}
}

// overMemory lowers vm's memory limit, in its cgroup, to a little above
// what it takes, and has its guest take all of its memory: the kernel
// kills the VMM, its supervisor says it was the memory limit and fails,
// and its keeper starts it again, in a cgroup with the VM's own limit.
// ssh runs a command in the guest.
func overMemory(t *testing.T, vm *config.VM, ssh func(string) result) {
	st := started(t, vm, 0, time.Minute)
	g := vmCgroup(t, vm)
	u, err := g.Use()
	if err != nil {
		t.Fatal(err)
	}
	tight := (u.MemoryBytes>>20 + 64) << 20
	file := "memory.limit_in_bytes" // cgroup v1, the test machines'
	if _, err := os.Stat(filepath.Join(g.Dir("memory"), "memory.max")); err == nil {
		file = "memory.max"
	}
	if err := os.WriteFile(filepath.Join(g.Dir("memory"), file), []byte(strconv.FormatInt(tight, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: memory limit lowered to %d MiB (it takes %d MiB)", vm.Name, tight>>20, u.MemoryBytes>>20)
	r := ssh(`perl -e 'my @a; while (1) { push @a, "a" x (1<<20) }'`)
	t.Logf("the guest takes its memory: exit %d", r.code)
	again := started(t, vm, st.VMMPid, 2*time.Minute)
	if st.VMM().Alive() {
		t.Errorf("%s: the VMM over its limit (pid %d) still runs", vm.Name, st.VMMPid)
	}
	log, _ := os.ReadFile(vm.SupervisorLog())
	want := fmt.Sprintf("the VMM was killed by the memory limit of %d MiB", tight>>20)
	if !strings.Contains(string(log), want) || !strings.Contains(string(log), "restarting in") {
		t.Errorf("%s's log does not say %q and that it restarts:\n%s", vm.Name, want, supervise.Tail(log, 15))
	}
	if u, err := vmCgroup(t, vm).Use(); err != nil || u.MemoryMax != int64(vm.Limits.MemoryMiB)<<20 {
		t.Errorf("%s: after the restart its cgroup's memory limit is %d, %v; want %d MiB", vm.Name, u.MemoryMax, err, vm.Limits.MemoryMiB)
	}
	t.Logf("%s: VMM %d killed by the memory limit, running again as %d", vm.Name, st.VMMPid, again.VMMPid)
}

// killSupervisor kills vm's supervisor (SIGKILL: it stops nothing): its
// keeper kills what it left, the VMM and the virtiofsd daemons, before it
// starts it again.
func killSupervisor(t *testing.T, vm *config.VM) {
	st := started(t, vm, 0, 2*time.Minute)
	procs, err := vmCgroup(t, vm).Procs()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Run().Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	again := started(t, vm, st.VMMPid, 2*time.Minute)
	for _, pid := range procs {
		if id, err := proc.Of(pid); err == nil && id.Alive() {
			cmd, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			t.Errorf("%s: process %d (%s) of the killed supervisor outlived it", vm.Name, pid, strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	t.Logf("%s: supervisor %d killed with %d processes; running again, VMM %d", vm.Name, st.RunPid, len(procs), again.VMMPid)
}

// orphan kills vm's keeper, then its supervisor: what they leave (the VMM
// and its daemons) runs on, unsupervised, and the VM is orphaned, not
// stopped. It returns the processes left.
func orphan(t *testing.T, vm *config.VM) []int {
	st := started(t, vm, 0, 2*time.Minute)
	keeper, ok := supervise.KeeperPid(vm)
	if !ok {
		t.Fatalf("%s has no keeper", vm.Name)
	}
	if err := keeper.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	supervise.WaitGone(keeper, 10*time.Second, "the keeper lives")
	if err := st.Run().Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	supervise.WaitGone(st.Run(), 10*time.Second, "the supervisor lives")
	left := supervise.Leftovers(vm)
	if !slices.Contains(left, st.VMMPid) {
		t.Fatalf("%s: the VMM %d is not among what is left in its cgroup: %v", vm.Name, st.VMMPid, left)
	}
	return left
}

// gone checks that none of procs runs, and that vm's cgroup is gone.
func gone(t *testing.T, vm *config.VM, g *cgroup.Group, procs []int) {
	for _, pid := range procs {
		if id, err := proc.Of(pid); err == nil && id.Alive() {
			t.Errorf("%s: process %d still runs", vm.Name, pid)
		}
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s: its cgroup %s is still there", vm.Name, d)
		}
	}
}

// floodConsole has the guest print more than supervise.LogMax to its
// serial console (which takes minutes: about 100 KB/s through an emulated
// UART under TCG): the console log stays under the cap, the one before it
// too, and the newest lines are in it. (That a third rotation replaces
// the oldest file is supervise's TestLogRotates.)
func floodConsole(t *testing.T, vm *config.VM, ssh func(string) result) {
	const mib = supervise.LogMax>>20 + 4
	began := time.Now()
	// mib MiB of base64 (lines of 76 characters), then a line the test
	// looks for.
	r := ssh(fmt.Sprintf("head -c %d /dev/urandom | base64 > /dev/ttyS0 && echo console-flood-done > /dev/ttyS0", (mib<<20)*3/4))
	if r.code != 0 {
		t.Fatalf("printing to the console: exit %d: %s", r.code, r.out)
	}
	for {
		b, _ := os.ReadFile(vm.ConsoleLog())
		if strings.Contains(string(b), "console-flood-done") {
			break
		}
		if time.Since(began) > 10*time.Minute {
			t.Fatalf("the end of the flood is not in the console log after 10 minutes")
		}
		time.Sleep(time.Second)
	}
	t.Logf("%d MiB printed to the console in %s", mib, time.Since(began).Round(time.Second))
	var total int64
	for _, f := range []string{vm.ConsoleLog(), vm.ConsoleLog() + ".1"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if fi.Size() > supervise.LogMax {
			t.Errorf("%s is %d bytes, over the cap of %d", f, fi.Size(), supervise.LogMax)
		}
		total += fi.Size()
		t.Logf("%s: %d bytes", f, fi.Size())
	}
	if total < mib<<20 {
		t.Errorf("the two files hold %d bytes, less than the %d MiB printed: was it all printed?", total, mib)
	}
}

// quotaInGuest runs package storage's TestProjectQuotaReal inside vm's
// guest, whose Debian kernel has ext4 project quotas (the machines the
// tests run on have none): the program's own code on a real ext4 with
// prjquota, a loop device in the guest.
func quotaInGuest(t *testing.T, vm *config.VM, ssh func(string) result) {
	bin := filepath.Join(vm.VarDir, "tmp", "storage.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "../../internal/storage")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building storage's tests: %v\n%s", err, out)
	}
	defer os.Remove(bin)
	r := ssh("MICROVM_TEST_QUOTA=1 /var/tmp/storage.test -test.run 'TestProjectQuotaReal|TestQuotaUnavailable' -test.v")
	t.Logf("in the guest:\n%s", r.out)
	if r.code != 0 || !strings.Contains(r.out, "--- PASS: TestProjectQuotaReal") {
		t.Errorf("TestProjectQuotaReal in the guest: exit %d", r.code)
	}
}
