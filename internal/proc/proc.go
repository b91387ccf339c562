// Package proc names processes so that a pid read back from a file is
// never taken for another process: an [ID] is a pid and the process's start
// time (in clock ticks since boot, field 22 of /proc/PID/stat), which a
// process that later gets the same pid does not have. Signals go through a
// pidfd, opened and then checked against the ID, so that even a pid reused
// between the check and the signal is not hit.
package proc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ID is one process: its pid and its start time.
type ID struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// ErrGone is returned for an ID whose process no longer exists (its pid
// may belong to another process by now).
var ErrGone = errors.New("the process is gone")

// Self is the calling process.
func Self() ID {
	// Our own /proc entry is there while we run.
	id, _ := Of(os.Getpid())
	return id
}

// Of returns the ID of the running process pid.
func Of(pid int) (ID, error) {
	start, _, err := stat(pid)
	if err != nil {
		return ID{}, err
	}
	return ID{Pid: pid, Start: start}, nil
}

// Valid reports whether id names a process at all (a record without a
// start time, as older versions wrote, names none).
func (id ID) Valid() bool { return id.Pid > 0 && id.Start > 0 }

// Alive reports whether id's process exists and is not a zombie.
func (id ID) Alive() bool {
	if !id.Valid() {
		return false
	}
	start, state, err := stat(id.Pid)
	return err == nil && start == id.Start && state != 'Z'
}

// Signal sends sig to id's process, and to no other: ErrGone if it has
// exited, whatever process has its pid now.
func (id ID) Signal(sig syscall.Signal) error {
	if !id.Valid() {
		return ErrGone
	}
	fd, err := unix.PidfdOpen(id.Pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return ErrGone
	}
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 5.3: check, then kill; a pid reused within
		// microseconds of the check is the risk left.
		if !id.Alive() {
			return ErrGone
		}
		return syscall.Kill(id.Pid, sig)
	}
	if err != nil {
		return fmt.Errorf("opening pidfd of %d: %w", id.Pid, err)
	}
	defer unix.Close(fd)
	// The pidfd holds whichever process had the pid at pidfd_open; it is
	// id's only if that one started when id did.
	if !id.Alive() {
		return ErrGone
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); errors.Is(err, unix.ESRCH) {
		return ErrGone
	} else if err != nil {
		return fmt.Errorf("signalling %d: %w", id.Pid, err)
	}
	return nil
}

// String is "pid N".
func (id ID) String() string { return "pid " + strconv.Itoa(id.Pid) }

// Parse reads an ID written by Format: "PID START".
func Parse(s string) (ID, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return ID{}, fmt.Errorf("%q is not a pid and a start time", s)
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 || start == 0 {
		return ID{}, fmt.Errorf("%q is not a pid and a start time", s)
	}
	return ID{Pid: pid, Start: start}, nil
}

// Format writes id as Parse reads it, with a newline.
func (id ID) Format() string { return fmt.Sprintf("%d %d\n", id.Pid, id.Start) }

// stat reads the start time and state of process pid. The command name in
// parentheses may hold anything, spaces and parentheses included, so the
// fields are counted from the last ')'.
func stat(pid int) (start uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, ErrGone
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("reading /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("reading /proc/%d/stat: too few fields", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
	}
	return start, f[0][0], nil
}
