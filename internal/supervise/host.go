package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// HostKeeper is the `microvm host` that runs for h, as it recorded itself
// in h.HostState() (package hostpart writes the rest of that file); ok is
// false when none runs. The record counts only from a run_dir that root
// alone can write, as its pid is signalled.
func HostKeeper(h config.Host) (id proc.ID, ok bool) {
	b, err := safedir.ReadPrivate(h.HostState())
	if err != nil || json.Unmarshal(b, &id) != nil {
		return id, false
	}
	return id, id.Alive()
}

// StartHost starts `bin host --detached -f file`, unless one runs, in its
// own session with its output appended to h.HostLog(). It returns once
// that keeps the firewall (it has written its state), or with what its
// log says when it could not.
func StartHost(bin, file string, h config.Host) error {
	if _, ok := HostKeeper(h); ok {
		return nil
	}
	run, err := safedir.OpenPrivateAll(h.RunDir)
	if err != nil {
		return err
	}
	log, err := run.OpenAppend(filepath.Base(h.HostLog()), 0o640)
	run.Close()
	if err != nil {
		return err
	}
	defer log.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	_ = os.Remove(h.HostState()) // a stale state, if any: the new host writes its own
	cmd := exec.Command(bin, "host", "--detached", "-f", file)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting microvm host: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // that it exited is what counts: its log says why
	deadline := time.After(30 * time.Second)
	for {
		if id, ok := HostKeeper(h); ok && id.Pid == cmd.Process.Pid {
			cmd.Process.Release()
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(h.HostLog()) // an empty tail if unreadable: the error says where it is
			return fmt.Errorf("microvm host exited at once; its log (%s) ends:\n%s", h.HostLog(), Tail(b, 5))
		case <-deadline:
			return fmt.Errorf("microvm host does not keep the firewall 30 s after it started; see %s", h.HostLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StopHost stops the `microvm host` that keeps a firewall: the unit under
// systemd, else the detached one, by the pid and start time it recorded.
// Teardown runs it before it deletes the table, which that host would
// load again.
type StopHost struct {
	Unit bool    // systemctl stop microvm-host.service
	ID   proc.ID // else this process
	Log  string  // its log, for the error
}

// StopHostAction is the StopHost for what keeps h's firewall, or nil when
// nothing does.
func StopHostAction(h config.Host) action.Action {
	if Booted() && Systemctl("is-active", "--quiet", HostUnit) == nil {
		return &StopHost{Unit: true}
	}
	if id, ok := HostKeeper(h); ok {
		return &StopHost{ID: id, Log: h.HostLog()}
	}
	return nil
}

func (a *StopHost) String() string {
	if a.Unit {
		return "systemctl stop " + HostUnit
	}
	return fmt.Sprintf("kill %d   # microvm host --detached, which keeps the firewall", a.ID.Pid)
}

func (a *StopHost) Apply() error {
	if a.Unit {
		return Systemctl("stop", HostUnit)
	}
	if err := a.ID.Signal(syscall.SIGTERM); errors.Is(err, proc.ErrGone) {
		return nil
	} else if err != nil {
		return fmt.Errorf("stopping microvm host (%s): %w", a.ID, err)
	}
	return WaitGone(a.ID, 30*time.Second, fmt.Sprintf("microvm host (%s) did not stop in 30 s; see %s", a.ID, a.Log))
}

// Notify tells systemd about the service, as sd_notify(3) does: "READY=1"
// once it is started, "STATUS=..." for systemctl status. Without systemd
// (no $NOTIFY_SOCKET) it does nothing.
func Notify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	// Go's net package reads a leading @ as Linux's abstract namespace.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notifying systemd: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notifying systemd: %w", err)
	}
	return nil
}
