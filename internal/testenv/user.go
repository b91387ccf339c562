package testenv

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// AsUser runs f as uid and gid (with no supplementary groups), to attack
// the host the way a compromised VMM would. It runs on a thread of its
// own, which first runs enter as root if given (to join a network
// namespace, say), then drops root for good: the goroutine ends locked to
// the thread, so the Go runtime ends the thread instead of reusing it. (Not
// the main thread: the runtime parks that one instead, and the process
// would go on as the user, for userdel and ps to see.)
func AsUser(uid, gid uint32, enter, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never ended, only parked: keep it,
			// and let another thread (not this one, held here) drop root.
			errc <- AsUser(uid, gid, enter, f)
			runtime.UnlockOSThread()
			return
		}
		if enter != nil {
			if err := enter(); err != nil {
				errc <- err
				return
			}
		}
		// The raw calls change this thread only, as wanted.
		for _, c := range []struct {
			nr   uintptr
			args [3]uintptr
		}{
			{unix.SYS_SETGROUPS, [3]uintptr{0, 0, 0}},
			{unix.SYS_SETRESGID, [3]uintptr{uintptr(gid), uintptr(gid), uintptr(gid)}},
			{unix.SYS_SETRESUID, [3]uintptr{uintptr(uid), uintptr(uid), uintptr(uid)}},
		} {
			if _, _, e := unix.RawSyscall(c.nr, c.args[0], c.args[1], c.args[2]); e != 0 {
				errc <- fmt.Errorf("dropping root for uid %d: %w", uid, e)
				return
			}
		}
		errc <- f()
	}()
	return <-errc
}
