package systemd

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The keeper restarts a supervisor that fails, passes SIGTERM on to it, and
// holds its pid file only while it runs. (test/lifecycle does the same with
// real VMs and a killed VMM.)
func TestKeep(t *testing.T) {
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
	if pid, ok := KeeperPid(vm); !ok || pid != os.Getpid() {
		t.Errorf("keeper pid file: %d %v, want %d", pid, ok, os.Getpid())
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

func TestLock(t *testing.T) {
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
