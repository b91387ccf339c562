// Package jail confines a program, the VMM, as Firecracker's jailer
// confines Firecracker: in a mount namespace of its own whose root holds
// only what it needs, in PID, network and IPC namespaces of its own, as an
// unprivileged user, with no capabilities and no_new_privs. A program that
// must act as root (virtiofsd) stays root, but with only the capabilities
// it is given (Caps) in its bounding set, on every one of its threads.
//
// What the jailed program sees (everything else of the host is not there):
//
//	/                    a tmpfs, root's, mounted read-only once built
//	ReadOnly paths       bound read-only (nosuid, nodev), each at its own path:
//	                     the system's program directories (/usr, and the
//	                     symlinks /bin, /lib... where the host merged them),
//	                     the kernel and initramfs, the virtiofs sockets
//	Writable paths       bound read-write (nosuid, nodev, noexec): the VMM's
//	                     own directory, where it makes its sockets and log
//	Devices              device nodes bound read-write (nosuid, noexec):
//	                     /dev/null, /dev/zero, /dev/full, /dev/random,
//	                     /dev/urandom, and /dev/kvm where the VMM uses KVM
//	/proc                a proc of its own PID namespace, read-only, with
//	                     only the process directories (subset=pid) unless
//	                     FullProc
//
// Each path is bound at the path it has on the host, so the VMM's command
// line, its sockets and its log are the same inside and out: the
// supervisor reaches the VMM's control socket and console log where it
// always did. Descriptors the VMM is given (its TAP's queues) pass through
// unchanged; device nodes it must open itself (/dev/kvm: neither QEMU nor
// Cloud Hypervisor takes it as a descriptor) are bound in, as the jailer
// makes them with mknod.
//
// # How
//
// Go's os/exec runs no code between fork and exec, so the program
// re-executes itself. [Jail.Wrap] turns the VMM's command into
//
//	microvm-jail --root DIR --uid U --gid G --groups G1,G2 --ro PATH... --rw PATH... --dev PATH... -- VMM ARGS...
//
// run from /proc/self/exe (this very binary, even if replaced on disk
// since) as root, cloned into new mount, PID, network and IPC namespaces.
// The package's init sees argv[0] "microvm-jail" and runs the jail
// instead of the program's main: it makes every mount private, mounts a
// tmpfs on DIR (an empty directory of root's, which the host keeps seeing
// empty), binds each path in, mounts /proc, remounts the tmpfs read-only,
// pivot_root(2)s into it and detaches the old root, drops the capability
// bounding set, takes the VM's user's groups, gid and uid, sets
// no_new_privs and executes the VMM, with an empty environment. The VMM
// is thus process 1 of its PID namespace and keeps the pid the supervisor
// started (the host sees the same process, and SO_PEERCRED reports its
// host pid to the supervisor): package proc's records and signals, and
// vmm.Dial's check of who listens on a socket, work as before. As init of
// its namespace it gets from outside only the signals it handles, and
// SIGKILL; when it exits, its namespaces go with it.
package jail

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arg0 is the name the program is re-executed under to build a jail.
const Arg0 = "microvm-jail"

// Jail is what a confined program sees and who it runs as.
type Jail struct {
	// Root is an empty directory of root's that the jail's root (a tmpfs)
	// is mounted on, inside the jail's mount namespace only.
	Root string
	// UID, GID and Groups are who the program runs as.
	UID, GID uint32
	Groups   []uint32
	// Caps, for a program that must run as root (UID 0: virtiofsd, which
	// serves files of every owner), are the only capabilities it may
	// ever have (its bounding set), by name: "chown", "dac_override"...
	// A program run as another user has none, and Caps must be empty.
	Caps []string
	// FullProc gives the program all of its /proc (still read-only, and
	// of its own PID namespace), not only the processes' directories: for
	// a program that reads /proc/sys (virtiofsd does).
	FullProc bool
	// NoFile, when not zero, is the program's limit of open files (soft
	// and hard), set while the jail may still raise it.
	NoFile uint64
	// ReadOnly are files and directories bound read-only, at their own
	// paths; Writable are bound read-write; Devices are device nodes.
	ReadOnly, Writable, Devices []string
}

// BaseDevices are the device nodes every VMM gets: the null, zero and
// full devices, and the kernel's random sources.
var BaseDevices = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}

// systemDirs are where distributions keep programs and the libraries they
// load: bound read-only where they exist (as symlinks where they are
// symlinks: /bin -> usr/bin on merged-/usr systems).
var systemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/nix/store"}

// Program returns what program (an absolute path) needs from the host's
// filesystem to run: the system's program and library directories, and
// the top directory of the program's own path and of the file it resolves
// to, where that is elsewhere (/opt/...). A symlink among them is recreated
// as a symlink, not bound.
func Program(program string) []string {
	var out []string
	add := func(p string) {
		if p == "" || p == "/" || slices.Contains(out, p) {
			return
		}
		if _, err := os.Lstat(p); err == nil {
			out = append(out, p)
		}
	}
	for _, d := range systemDirs {
		add(d)
	}
	add(topDir(program))
	if real, err := filepath.EvalSymlinks(program); err == nil {
		add(topDir(real))
	}
	return out
}

// topDir is the first component of an absolute path: /usr of /usr/bin/x.
func topDir(p string) string {
	if !filepath.IsAbs(p) {
		return ""
	}
	first, _, _ := strings.Cut(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	if first == "" {
		return ""
	}
	return "/" + first
}

// Check returns an error if j cannot be built: paths must be absolute and
// clean, the root's too, and the program must not run as root.
func (j Jail) Check() error {
	if !clean(j.Root) || j.Root == "/" {
		return fmt.Errorf("jail root %q: not a clean absolute path", j.Root)
	}
	switch {
	case j.UID == 0 && len(j.Caps) == 0:
		return errors.New("a jail runs its program as root only with the capabilities it may have (Caps)")
	case j.UID != 0 && (j.GID == 0 || slices.Contains(j.Groups, 0)):
		return errors.New("a jail does not run its program as another user with group root")
	case j.UID != 0 && len(j.Caps) > 0:
		return errors.New("a jail gives capabilities only to a program run as root")
	}
	for _, c := range j.Caps {
		if _, ok := capabilities[c]; !ok {
			return fmt.Errorf("jail capability %q: unknown", c)
		}
	}
	for _, p := range slices.Concat(j.ReadOnly, j.Writable, j.Devices) {
		if !clean(p) || p == "/" {
			return fmt.Errorf("jail path %q: not a clean absolute path", p)
		}
		if strings.ContainsAny(p, "\n") {
			return fmt.Errorf("jail path %q: has a newline", p)
		}
	}
	return nil
}

func clean(p string) bool { return filepath.IsAbs(p) && filepath.Clean(p) == p }

// Args are the jail's options, as its helper reads them (see the package
// comment).
func (j Jail) Args() []string {
	args := []string{"--root", j.Root,
		"--uid", strconv.FormatUint(uint64(j.UID), 10),
		"--gid", strconv.FormatUint(uint64(j.GID), 10)}
	if len(j.Groups) > 0 {
		gs := make([]string, len(j.Groups))
		for i, g := range j.Groups {
			gs[i] = strconv.FormatUint(uint64(g), 10)
		}
		args = append(args, "--groups", strings.Join(gs, ","))
	}
	if len(j.Caps) > 0 {
		args = append(args, "--caps", strings.Join(j.Caps, ","))
	}
	if j.NoFile > 0 {
		args = append(args, "--nofile", strconv.FormatUint(j.NoFile, 10))
	}
	if j.FullProc {
		args = append(args, "--full-proc")
	}
	for _, l := range []struct {
		flag  string
		paths []string
	}{{"--ro", j.ReadOnly}, {"--rw", j.Writable}, {"--dev", j.Devices}} {
		for _, p := range l.paths {
			args = append(args, l.flag, p)
		}
	}
	return args
}

// capabilities are the capabilities a jail can leave a program run as
// root, by the names capabilities(7) and virtiofsd's --modcaps use.
var capabilities = map[string]uintptr{
	"chown":           unix.CAP_CHOWN,
	"dac_override":    unix.CAP_DAC_OVERRIDE,
	"dac_read_search": unix.CAP_DAC_READ_SEARCH,
	"fowner":          unix.CAP_FOWNER,
	"fsetid":          unix.CAP_FSETID,
	"setgid":          unix.CAP_SETGID,
	"setuid":          unix.CAP_SETUID,
	"setpcap":         unix.CAP_SETPCAP,
	"sys_chroot":      unix.CAP_SYS_CHROOT,
	"mknod":           unix.CAP_MKNOD,
	"setfcap":         unix.CAP_SETFCAP,
}

// Namespaces are the namespaces a jailed program gets of its own.
const Namespaces = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC

// Wrap changes cmd, not started yet, so that it runs its program in j.
// cmd keeps its descriptors (ExtraFiles), its output and its process
// group; its user is j's, so it must not have a Credential of its own.
func (j Jail) Wrap(cmd *exec.Cmd) error {
	if err := j.Check(); err != nil {
		return err
	}
	if cmd.Err != nil {
		return cmd.Err
	}
	if !filepath.IsAbs(cmd.Path) {
		return fmt.Errorf("jailing %s: the program's path is not absolute", cmd.Path)
	}
	attr := cmd.SysProcAttr
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	if attr.Credential != nil {
		return fmt.Errorf("jailing %s: the command has a user of its own; the jail sets it", cmd.Path)
	}
	if attr.Chroot != "" || attr.Cloneflags&syscall.CLONE_NEWUSER != 0 {
		return fmt.Errorf("jailing %s: the command has a root or user namespace of its own", cmd.Path)
	}
	args := append([]string{Arg0}, j.Args()...)
	args = append(args, "--", cmd.Path)
	args = append(args, cmd.Args[1:]...)
	attr.Cloneflags |= Namespaces
	cmd.SysProcAttr = attr
	cmd.Path = "/proc/self/exe"
	cmd.Args = args
	return nil
}
