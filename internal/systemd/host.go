package systemd

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
)

// HostState is what `microvm host` says about itself in h.HostState(),
// for status --host.
type HostState struct {
	Pid      int                `json:"pid"`
	Since    time.Time          `json:"since"`
	File     string             `json:"file"`
	Detached bool               `json:"detached"` // started by up or apply, not by systemd
	Repairs  int                `json:"repairs"`
	Recent   []firewall.Restore `json:"recent_repairs,omitempty"` // the last few, newest last
}

// KeepRepairs is how many repairs HostState keeps.
const KeepRepairs = 10

// Repaired counts r and keeps it among the recent ones.
func (st *HostState) Repaired(r firewall.Restore) {
	st.Repairs++
	st.Recent = append(st.Recent, r)
	if len(st.Recent) > KeepRepairs {
		st.Recent = st.Recent[len(st.Recent)-KeepRepairs:]
	}
}

// Last is the last repair, or nil.
func (st *HostState) Last() *firewall.Restore {
	if len(st.Recent) == 0 {
		return nil
	}
	return &st.Recent[len(st.Recent)-1]
}

// ReadHostState reads h's host state; ok is false when no `microvm host`
// runs.
func ReadHostState(h config.Host) (st HostState, ok bool) {
	b, err := os.ReadFile(h.HostState())
	if err != nil || json.Unmarshal(b, &st) != nil || st.Pid <= 0 {
		return st, false
	}
	return st, Alive(st.Pid)
}

// WriteHostState writes st for status, replacing the file at once.
func WriteHostState(h config.Host, st HostState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := h.HostState() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, h.HostState())
}

// StartHost starts `bin host --detached -f file`, unless one runs, in its
// own session with its output appended to h.HostLog(). It returns once
// that keeps the firewall (it has written its state), or with what its
// log says when it could not.
func StartHost(bin, file string, h config.Host) error {
	if _, ok := ReadHostState(h); ok {
		return nil
	}
	if err := os.MkdirAll(h.RunDir, 0o755); err != nil {
		return err
	}
	log, err := os.OpenFile(h.HostLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer log.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	os.Remove(h.HostState())
	cmd := exec.Command(bin, "host", "--detached", "-f", file)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting microvm host: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.After(30 * time.Second)
	for {
		if st, ok := ReadHostState(h); ok && st.Pid == cmd.Process.Pid {
			cmd.Process.Release()
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(h.HostLog())
			return fmt.Errorf("microvm host exited at once; its log (%s) ends:\n%s", h.HostLog(), tail(b, 5))
		case <-deadline:
			return fmt.Errorf("microvm host does not keep the firewall 30 s after it started; see %s", h.HostLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
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

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
