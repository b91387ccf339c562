package virtiofs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/jail"
)

// Jail is the jail a daemon serving s runs in (package jail): the daemon's
// program and the system's directories read-only, the shared directory
// (read-only for a read-only share), its device nodes; as root, with only
// the capabilities of JailCaps. No thread of the daemon ever has another
// capability, CAP_SYS_ADMIN above all: its namespaces, made by the jail,
// cannot be undone from inside.
func (d Daemon) Jail(s Share) jail.Jail {
	j := jail.Jail{
		Root:     s.JailDir,
		Caps:     JailCaps(s),
		NoFile:   NoFile(),
		FullProc: true, // the C daemon reads /proc/sys/fs/file-max, whatever its options
		ReadOnly: jail.Program(d.Path),
		Devices:  jail.BaseDevices,
	}
	if s.ReadOnly {
		j.ReadOnly = append(j.ReadOnly, s.Dir)
	} else {
		j.Writable = []string{s.Dir}
	}
	return j
}

// JailCaps are the capabilities a daemon serving s may ever have: Caps,
// which it keeps, and two it drops once sandboxed: sys_chroot, for its
// chroot sandbox, and setpcap, without which libcap-ng (0.8.3, Debian 12)
// takes a path that calls readlink(2) after the daemon's own seccomp
// filter is on, which kills it.
func JailCaps(s Share) []string {
	return append(Caps(s), "sys_chroot", "setpcap")
}

// NoFile is the limit of open files of a daemon, which keeps one open per
// file the guest has looked up: what the daemons choose by themselves (they
// can no longer raise it in their jail, nor read /proc/sys), 1,000,000 or,
// on a host with fewer, the kernel's file-max less 16384 for the others;
// never above nr_open, the most the kernel allows a process.
func NoFile() uint64 {
	n := uint64(1_000_000)
	if max, ok := readUint("/proc/sys/fs/file-max"); ok && max > 16384 && max-16384 < n {
		n = max - 16384
	}
	if open, ok := readUint("/proc/sys/fs/nr_open"); ok && open < n {
		n = open
	}
	return n
}

func readUint(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n, err == nil
}

// Command returns the command that serves s on the listening socket
// listener, in the daemon's jail. It changes nothing; [Start] runs it.
//
// The daemon gets a process group of its own, so that a Ctrl-C in the
// terminal of `microvm run` reaches only the supervisor, which stops the
// guest before its daemons; a daemon that died first would leave the guest
// with I/O errors on its root filesystem.
func (d Daemon) Command(s Share, listener *os.File) (*exec.Cmd, error) {
	cmd := exec.Command(d.Path, d.Args(s)...)
	cmd.ExtraFiles = []*os.File{listener} // ListenFd
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Jail(s).Wrap(cmd); err != nil {
		return nil, fmt.Errorf("jailing virtiofsd for share %s: %w", s.Tag, err)
	}
	return cmd, nil
}

// Process is a running daemon serving one share.
type Process struct {
	Share    Share
	cmd      *exec.Cmd
	listener *os.File // the supervisor's copy of the daemon's listening socket
	out      *tail
	done     chan struct{}
	err      error
}

// Start serves s with d and returns once the daemon runs in its jail.
// Its output goes to log (nil discards it).
//
// Before starting, it checks that a read-only share is on a read-only
// mount ([CheckReadOnly]). It makes the share's socket itself (removing
// one an earlier daemon left), root's and s.Group's (mode 0660), and
// gives the daemon its listening descriptor: the daemon's jail holds no
// directory of the supervisor's. A VMM may connect at once; the daemon
// accepts it once it is ready.
func Start(ctx context.Context, d Daemon, s Share, log io.Writer) (*Process, error) {
	if s.ReadOnly {
		if err := CheckReadOnly(s.Dir); err != nil {
			return nil, fmt.Errorf("starting virtiofsd for share %s: %w (is the read-only view mounted? see virtiofs.ReadOnlyView)", s.Tag, err)
		}
	}
	if err := os.MkdirAll(s.JailDir, 0o700); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for share %s: %w", s.Tag, err)
	}
	listener, err := listen(s)
	if err != nil {
		return nil, fmt.Errorf("starting virtiofsd for share %s: %w", s.Tag, err)
	}
	if log == nil {
		log = io.Discard
	}
	cmd, err := d.Command(s, listener)
	if err != nil {
		listener.Close()
		return nil, err
	}
	p := &Process{Share: s, cmd: cmd, listener: listener, out: &tail{}, done: make(chan struct{})}
	w := io.MultiWriter(log, p.out)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		listener.Close()
		return nil, fmt.Errorf("starting virtiofsd for share %s: %w", s.Tag, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.listener.Close()
		close(p.done)
	}()

	// Ready once the jail is built and the daemon's program runs in it.
	program, err := filepath.EvalSymlinks(d.Path)
	if err != nil {
		program = d.Path
	}
	exe := "/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/exe"
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if got, err := os.Readlink(exe); err == nil && got == program {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("starting virtiofsd for share %s: it exited (%v) before serving %s: %s", s.Tag, p.err, s.Socket, p.out)
		case <-ctx.Done():
			_ = p.Stop(time.Second) // its not running is the error to report
			return nil, fmt.Errorf("starting virtiofsd for share %s: not running in its jail yet: %w: %s", s.Tag, ctx.Err(), p.out)
		case <-tick.C:
		}
	}
}

// listen makes s's socket, root's and s.Group's, and returns its listening
// descriptor.
func listen(s Share) (*os.File, error) {
	if err := os.Remove(s.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", s.Socket, err)
	}
	gid := -1
	if s.Group != "" {
		g, err := user.LookupGroup(s.Group)
		if err != nil {
			return nil, err
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("group %s: %w", s.Group, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.Socket, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File() // a blocking copy, for the daemon
	l.Close()
	if err != nil {
		return nil, err
	}
	// Until now root's alone (the umask): only the group is added.
	if err := os.Chown(s.Socket, 0, gid); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Chmod(s.Socket, 0o660); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Done is closed when the daemon has exited. A daemon exits by itself when
// its VMM disconnects, so after the VMM has gone Done closes soon.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop asks the daemon to exit (SIGTERM), and kills it (SIGKILL) if it is
// still there after grace. It returns once the daemon is gone. Its exit
// status is not an error: a daemon told to stop while it waits for its VMM
// exits with status 1.
//
// A daemon still waiting for its VMM is blocked in accept(2), where a
// signal it handles does not end it: shutting its listening socket down
// does (accept fails, and the daemon exits).
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if raw, err := p.listener.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
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
