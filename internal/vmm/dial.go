package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Dial connects to the Unix socket at path, which the VMM made in its own
// directory (config.VM.VMMDir), and returns the connection only if the
// process listening on it is pid.
//
// The VMM's user can replace anything in that directory: a symlink from
// its control socket to another VM's, or to any socket on the host, would
// make root send that one its commands ("quit"). So the last component of
// path is opened without following it, the socket is reached through that
// descriptor, and the listener's pid is checked (SO_PEERCRED) before a
// byte is sent. A pid of 0 skips the last check: only to see whether
// anything listens.
func Dial(ctx context.Context, path string, pid int) (net.Conn, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%s is not a socket (a symlink or a file put there by the VMM's user?)", path)
	}
	// connect(2) through /proc/self/fd/N reaches the very socket opened
	// above, whatever is renamed meanwhile.
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", path, err)
	}
	if pid == 0 {
		return conn, nil
	}
	peer, err := peerPid(conn)
	if err == nil && peer != pid {
		err = fmt.Errorf("process %d listens there, not the VMM (pid %d)", peer, pid)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connecting to %s: %w", path, err)
	}
	return conn, nil
}

// peerPid is the pid of the process at the other end of a Unix socket, as
// the kernel recorded it when that process listened.
func peerPid(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a Unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// startNoNewPrivs starts cmd with the no_new_privs bit set (see
// prctl(2), PR_SET_NO_NEW_PRIVS): no program it runs, setuid or with file
// capabilities, gains a privilege. The bit is per thread and inherited by
// children, so it is set on a thread of its own that starts cmd and is then
// discarded: the goroutine exits still locked to it, and the Go runtime
// ends such a thread instead of reusing it.
func startNoNewPrivs(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The runtime parks the main thread instead of ending it: keep
			// it, and set the bit on another thread (not this one, held).
			errc <- startNoNewPrivs(cmd)
			runtime.UnlockOSThread()
			return
		}
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			errc <- fmt.Errorf("setting no_new_privs: %w", err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}
