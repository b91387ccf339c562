package proc

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	id := Self()
	if !id.Valid() || id.Pid != os.Getpid() || !id.Alive() {
		t.Fatalf("Self() = %+v, alive %v", id, id.Alive())
	}
	back, err := Parse(id.Format())
	if err != nil || back != id {
		t.Errorf("Parse(Format()) = %+v, %v; want %+v", back, err, id)
	}
}

// TestReusedPid: an ID with the right pid but another start time is not
// that process, and is never signalled.
func TestReusedPid(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	real, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	other := ID{Pid: real.Pid, Start: real.Start + 1} // as a record of an earlier process with that pid
	if other.Alive() {
		t.Error("an ID with another start time is alive")
	}
	if err := other.Signal(syscall.SIGTERM); !errors.Is(err, ErrGone) {
		t.Errorf("Signal with another start time: %v; want ErrGone", err)
	}
	if err := (ID{Pid: real.Pid}).Signal(syscall.SIGTERM); !errors.Is(err, ErrGone) {
		t.Errorf("Signal without a start time: %v; want ErrGone", err)
	}
	time.Sleep(50 * time.Millisecond)
	if !real.Alive() {
		t.Fatal("the process was signalled through a wrong ID")
	}
	if err := real.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if real.Alive() {
		t.Error("alive after it exited")
	}
	if err := real.Signal(syscall.SIGTERM); !errors.Is(err, ErrGone) {
		t.Errorf("Signal after exit: %v; want ErrGone", err)
	}
}

func TestParseBad(t *testing.T) {
	for _, s := range []string{"", "123", "123 0", "-1 5", "x 5", "1 2 3"} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted it", s)
		}
	}
}
