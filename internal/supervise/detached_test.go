package supervise

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The keeper restarts a supervisor that fails, passes SIGTERM on to it, and
// holds its pid file only while it runs. The supervisor runs in the VM's
// cgroup, with its limits, from before it starts anything; what it leaves
// there when it exits (a VMM, daemons) is killed. (test/lifecycle does the
// same with real VMs and a killed VMM.)
func TestKeep(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "microvm")
	// The first run leaves a child behind (a VMM whose supervisor
	// died), and fails.
	script := `#!/bin/sh
read gate <&3
n=$(cat ` + dir + `/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ` + dir + `/count
cat /proc/self/cgroup > ` + dir + `/cgroup.$n
if [ $n -eq 1 ]; then sleep 600 >/dev/null 2>&1 & echo $! > ` + dir + `/left; exit 1; fi
trap 'echo stopped > ` + dir + `/stopped; exit 0' TERM
echo $$ > ` + dir + `/child
while :; do sleep 0.1; done
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	vm := &config.VM{Name: "vm1", RunDir: dir, Limits: config.Limits{MemoryMiB: 256, Pids: 64, CPUWeight: 100, IOWeight: 100}}
	var log testenv.SyncBuffer
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- Keep(bin, filepath.Join(dir, "infra.toml"), vm, &log) }()
	for {
		if _, err := os.Stat(filepath.Join(dir, "child")); err == nil {
			break
		}
		if time.Since(began) > 5*time.Second {
			t.Fatalf("not restarted within 5 s; log:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("restarted after %s", time.Since(began).Round(10*time.Millisecond))
	// The first run's child went with it.
	left, _ := os.ReadFile(filepath.Join(dir, "left"))
	if pid, err := strconv.Atoi(strings.TrimSpace(string(left))); err != nil || alive(pid) {
		t.Errorf("what the failed supervisor left (pid %q) still runs: %v", left, err)
	}
	// The supervisor is in the VM's cgroup, as recorded, with its limits.
	g, ok := Cgroup(vm)
	if !ok {
		t.Fatal("no cgroup recorded")
	}
	if u, err := g.Use(); err != nil || u.MemoryMax != 256<<20 || u.PidsMax != 64 {
		t.Errorf("the cgroup's limits: %+v, %v", u, err)
	}
	in, _ := os.ReadFile(filepath.Join(dir, "cgroup.2"))
	if !strings.Contains(string(in), "/"+vm.CgroupName()+"\n") {
		t.Errorf("the supervisor runs in\n%s\nnot in %s", in, vm.CgroupName())
	}
	if got := Leftovers(vm); len(got) != 0 {
		t.Errorf("leftovers while its keeper runs: %v", got)
	}
	if id, ok := KeeperPid(vm); !ok || id != proc.Self() {
		t.Errorf("keeper pid file: %+v %v, want %+v", id, ok, proc.Self())
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Keep: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("keeper did not stop; log:\n%s", log.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "stopped")); err != nil {
		t.Error("the supervisor was not given SIGTERM")
	}
	if _, err := os.Stat(vm.KeeperPidFile()); !os.IsNotExist(err) {
		t.Error("pid file left behind")
	}
	if _, err := os.Stat(vm.CgroupRecord()); !os.IsNotExist(err) {
		t.Error("cgroup record left behind")
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind", d)
		}
	}
	if !strings.Contains(log.String(), "failed (exit status 1); restarting in 1s") {
		t.Errorf("log:\n%s", log.String())
	}
}

// TestKeeperPidChecked: a keeper pid is believed only from a run
// directory that only root can write, and only for the process that
// started when the keeper did; anything else is "not running", and
// StopDetached signals nothing.
func TestKeeperPidChecked(t *testing.T) {
	testenv.NeedRoot(t)
	victim := exec.Command("sleep", "60")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer victim.Process.Kill()
	id, err := proc.Of(victim.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		content string
		setup   func(dir string)
	}{
		{"pid without a start time", fmt.Sprintf("%d\n", id.Pid), nil},
		{"another process's start time", proc.ID{Pid: id.Pid, Start: id.Start + 7}.Format(), nil},
		{"directory the VMM user can write", id.Format(), func(dir string) { os.Chown(dir, 1234, 1234) }},
		{"world-writable directory", id.Format(), func(dir string) { os.Chmod(dir, 0o777) }},
		{"pid file is a symlink", "", func(dir string) {
			os.WriteFile(filepath.Join(dir, "elsewhere"), []byte(id.Format()), 0o644)
			os.Symlink("elsewhere", filepath.Join(dir, "keeper.pid"))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			vm := &config.VM{Name: "vm1", RunDir: dir}
			if tt.content != "" {
				os.WriteFile(vm.KeeperPidFile(), []byte(tt.content), 0o644)
			}
			if tt.setup != nil {
				tt.setup(dir)
			}
			if got, ok := KeeperPid(vm); ok {
				t.Errorf("KeeperPid believed %+v", got)
			}
			if err := StopDetached(vm, time.Second); err != ErrNotRunning {
				t.Errorf("StopDetached: %v, want ErrNotRunning", err)
			}
			if !id.Alive() {
				t.Fatal("the victim was signalled")
			}
		})
	}
	// The same record, where it belongs, is believed.
	dir := t.TempDir()
	vm := &config.VM{Name: "vm1", RunDir: dir}
	os.WriteFile(vm.KeeperPidFile(), []byte(id.Format()), 0o644)
	if got, ok := KeeperPid(vm); !ok || got != id {
		t.Errorf("KeeperPid = %+v, %v; want %+v", got, ok, id)
	}
}

func TestLock(t *testing.T) {
	testenv.NeedRoot(t) // the lock is kept in a directory of root's
	h := config.Host{RunDir: t.TempDir()}
	l, err := TakeLock(h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TakeLock(h); err == nil || !strings.Contains(err.Error(), "another microvm command is changing VMs (pid ") {
		t.Errorf("second lock: %v", err)
	}
	l.Release()
	l2, err := TakeLock(h)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

// alive reports whether pid runs (a zombie, killed but not reaped by
// whoever inherited it, does not).
func alive(pid int) bool {
	id, err := proc.Of(pid)
	return err == nil && id.Alive()
}
