package supervise

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The keeper restarts a supervisor that fails, passes SIGTERM on to it, and
// holds its pid file only while it runs. (test/lifecycle does the same with
// real VMs and a killed VMM.)
func TestKeep(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "microvm")
	script := `#!/bin/sh
n=$(cat ` + dir + `/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ` + dir + `/count
[ $n -eq 1 ] && exit 1
trap 'echo stopped > ` + dir + `/stopped; exit 0' TERM
echo $$ > ` + dir + `/child
while :; do sleep 0.1; done
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	vm := &config.VM{Name: "vm1", RunDir: dir}
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
