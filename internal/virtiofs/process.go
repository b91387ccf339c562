package virtiofs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Command returns the command that serves s. It changes nothing; [Start]
// runs it.
//
// The daemon gets a process group of its own, so that a Ctrl-C in the
// terminal of `microvm run` reaches only the supervisor, which stops the
// guest before its daemons; a daemon that died first would leave the guest
// with I/O errors on its root filesystem.
func (d Daemon) Command(s Share) *exec.Cmd {
	cmd := exec.Command(d.Path, d.Args(s)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Process is a running daemon serving one share.
type Process struct {
	Share Share
	cmd   *exec.Cmd
	out   *tail
	done  chan struct{}
	err   error
}

// Start serves s with d and returns once the daemon listens on s.Socket.
// Its output goes to log (nil discards it).
//
// Before starting, it checks that a read-only share is on a read-only
// mount ([CheckReadOnly]), and removes a socket file left by an earlier
// daemon, so that the socket's appearance is this daemon's.
func Start(ctx context.Context, d Daemon, s Share, log io.Writer) (*Process, error) {
	if s.ReadOnly {
		if err := CheckReadOnly(s.Dir); err != nil {
			return nil, fmt.Errorf("starting virtiofsd for share %s: %w (is the read-only view mounted? see virtiofs.ReadOnlyView)", s.Tag, err)
		}
	}
	if err := os.Remove(s.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", s.Socket, err)
	}
	if log == nil {
		log = io.Discard
	}
	p := &Process{Share: s, cmd: d.Command(s), out: &tail{}, done: make(chan struct{})}
	w := io.MultiWriter(log, p.out)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for share %s: %w", s.Tag, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Stat(s.Socket); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("starting virtiofsd for share %s: it exited (%v) before listening on %s: %s", s.Tag, p.err, s.Socket, p.out)
		case <-ctx.Done():
			_ = p.Stop(time.Second) // the missing socket is the error to report
			return nil, fmt.Errorf("starting virtiofsd for share %s: no socket %s yet: %w", s.Tag, s.Socket, ctx.Err())
		case <-tick.C:
		}
	}
}

// Done is closed when the daemon has exited. A daemon exits by itself when
// its VMM disconnects, so after the VMM has gone Done closes soon.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop asks the daemon to exit (SIGTERM), and kills it (SIGKILL) if it is
// still there after grace. It returns once the daemon is gone. Its exit
// status is not an error: a daemon told to stop while it waits for its VMM
// exits with status 1.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping virtiofsd for share %s: %w", p.Share.Tag, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing virtiofsd for share %s: %w", p.Share.Tag, err)
	}
	<-p.done
	return nil
}

// tail keeps the last bytes a daemon wrote, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 2048

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > tailSize {
		t.buf = t.buf[len(t.buf)-tailSize:]
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}
