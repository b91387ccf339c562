package jail

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The helper: when this binary is re-executed as Arg0 (by Wrap), it builds
// the jail and executes the program in it instead of running main. It is
// an init so that every binary that can wrap a command (microvm, and the
// tests of the packages that use this one) can also be the helper.
func init() {
	if len(os.Args) == 0 || os.Args[0] != Arg0 {
		return
	}
	err := enter(os.Args[1:])
	// enter returns only on failure: the program is not started.
	fmt.Fprintf(os.Stderr, "%s: %v\n", Arg0, err)
	os.Exit(126)
}

// parse reads the helper's command line: the jail, then the program and
// its arguments after "--".
func parse(args []string) (j Jail, argv []string, err error) {
	fs := flag.NewFlagSet(Arg0, flag.ContinueOnError)
	fs.StringVar(&j.Root, "root", "", "")
	uid := fs.Uint("uid", 0, "")
	gid := fs.Uint("gid", 0, "")
	groups := fs.String("groups", "", "")
	caps := fs.String("caps", "", "")
	fs.Uint64Var(&j.NoFile, "nofile", 0, "")
	fs.BoolVar(&j.FullProc, "full-proc", false, "")
	fs.Func("ro", "", func(s string) error { j.ReadOnly = append(j.ReadOnly, s); return nil })
	fs.Func("rw", "", func(s string) error { j.Writable = append(j.Writable, s); return nil })
	fs.Func("dev", "", func(s string) error { j.Devices = append(j.Devices, s); return nil })
	if err := fs.Parse(args); err != nil {
		return j, nil, err
	}
	j.UID, j.GID = uint32(*uid), uint32(*gid)
	if *groups != "" {
		for _, g := range strings.Split(*groups, ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return j, nil, fmt.Errorf("--groups: %w", err)
			}
			j.Groups = append(j.Groups, uint32(n))
		}
	}
	if *caps != "" {
		j.Caps = strings.Split(*caps, ",")
	}
	argv = fs.Args()
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return j, nil, errors.New("no program (an absolute path) after --")
	}
	return j, argv, j.Check()
}

// enter builds the jail in the namespaces it was cloned into and executes
// the program there; it returns only with the reason it could not.
func enter(args []string) error {
	j, argv, err := parse(args)
	if err != nil {
		return err
	}
	// Credentials and no_new_privs are set on this thread, which then
	// executes the program: the process takes the executing thread's.
	runtime.LockOSThread()
	if os.Geteuid() != 0 {
		return errors.New("must be started as root")
	}
	if os.Getpid() != 1 {
		return errors.New("not in a PID namespace of its own (started without jail.Wrap?)")
	}
	// The program, resolved while the host's filesystem is still there:
	// a symlink to it (/etc/alternatives, a profile's bin) may point
	// outside the jail.
	prog, err := filepath.EvalSymlinks(argv[0])
	if err != nil {
		return err
	}
	if j.NoFile > 0 {
		if err := setNoFile(j.NoFile); err != nil {
			return err
		}
	}
	if err := build(j); err != nil {
		return err
	}
	if err := drop(j); err != nil {
		return err
	}
	// No environment: the supervisor's is not the VMM's business.
	return fmt.Errorf("executing %s: %w", prog, unix.Exec(prog, argv, []string{}))
}

// setNoFile sets the limit of open files to n, or as near as this process
// may: without CAP_SYS_RESOURCE (a container's root), up to its hard
// limit.
func setNoFile(n uint64) error {
	err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n})
	if errors.Is(err, unix.EPERM) {
		var lim unix.Rlimit
		if err = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
			lim.Cur = min(n, lim.Max)
			err = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
	}
	if err != nil {
		return fmt.Errorf("setting the limit of open files to %d: %w", n, err)
	}
	return nil
}

// Flags of the jail's mounts, beyond the ones their sources already have.
const (
	readOnlyFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV
	writableFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	deviceFlags   = unix.MS_NOSUID | unix.MS_NOEXEC
	rootFlags     = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

// build makes the jail's root and moves into it.
func build(j Jail) error {
	// Nothing done here reaches the host's mount namespace, and nothing
	// the host mounts later reaches the jail.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	root := j.Root
	if err := unix.Mount("tmpfs", root, "tmpfs", rootFlags, "mode=0755,size=1m,nr_inodes=4096"); err != nil {
		return fmt.Errorf("mounting the jail's root on %s: %w", root, err)
	}
	type bind struct {
		path  string
		flags uintptr
	}
	var binds []bind
	for _, p := range j.ReadOnly {
		binds = append(binds, bind{p, readOnlyFlags})
	}
	for _, p := range j.Writable {
		binds = append(binds, bind{p, writableFlags})
	}
	for _, p := range j.Devices {
		binds = append(binds, bind{p, deviceFlags})
	}
	// Parents before children: a path inside a bound directory is bound
	// over itself there.
	slices.SortFunc(binds, func(a, b bind) int { return strings.Compare(a.path, b.path) })
	for _, b := range binds {
		if err := bindIn(root, b.path, b.flags); err != nil {
			return err
		}
	}
	proc := filepath.Join(root, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return fmt.Errorf("making /proc: %w", err)
	}
	if err := mountProc(proc, j.FullProc); err != nil {
		return err
	}
	if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|rootFlags, ""); err != nil {
		return fmt.Errorf("remounting the jail's root read-only: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// it leaves the jail's root alone (pivot_root(2), NOTES).
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	return unix.Chdir("/")
}

// bindIn binds path on the host at the same path under root, then remounts
// it with flags added to those of its source (a bind mount starts with
// its source's flags, and a remount sets them all).
func bindIn(root, path string, flags uintptr) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	target := filepath.Join(root, path)
	if fi.Mode()&os.ModeSymlink != 0 && isSystemDir(path) {
		// /lib -> usr/lib on merged-/usr hosts: the same link, pointing
		// into what is bound.
		dest, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		return os.Symlink(dest, target)
	}
	fi, err = os.Stat(path)
	if err != nil {
		return err
	}
	if err := makeTarget(target, fi.IsDir()); err != nil {
		return fmt.Errorf("making %s in the jail: %w", path, err)
	}
	if err := unix.Mount(path, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s into the jail: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return err
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|flags|kept(st.Flags), ""); err != nil {
		return fmt.Errorf("remounting %s in the jail: %w", path, err)
	}
	return nil
}

func isSystemDir(p string) bool { return slices.Contains(systemDirs, p) }

// makeTarget makes the mount point of a bind: a directory, or an empty
// file for a file or device node. One already there (inside an earlier
// bind) is used as it is.
func makeTarget(target string, dir bool) error {
	if _, err := os.Lstat(target); err == nil {
		return nil
	}
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	return f.Close()
}

// kept are the mount flags of a source (statfs's) that its bind keeps.
func kept(f int64) uintptr {
	var out uintptr
	for _, m := range []struct {
		st    int64
		mount uintptr
	}{
		{unix.ST_RDONLY, unix.MS_RDONLY},
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if f&m.st != 0 {
			out |= m.mount
		}
	}
	return out
}

// mountProc mounts a proc of the jail's PID namespace at dir, read-only,
// unless full with only the processes' directories where the kernel can
// (5.8 and newer: subset=pid; no /proc/sys, /proc/kcore and the like).
func mountProc(dir string, full bool) error {
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	opts := "subset=pid"
	if full {
		opts = ""
	}
	err := unix.Mount("proc", dir, "proc", flags, opts)
	if errors.Is(err, unix.EINVAL) && !full {
		err = unix.Mount("proc", dir, "proc", flags, "")
	}
	if err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	return nil
}

// drop becomes j's user for good, on this thread: no capability left to
// regain (the bounding set emptied first, while root may), no new
// privileges from any program it runs. Root (a jail with Caps) keeps its
// uid, and only Caps in its bounding set: the program starts with them
// and can never have more, on any of its threads.
func drop(j Jail) error {
	keep := map[uintptr]bool{}
	for _, c := range j.Caps {
		keep[capabilities[c]] = true
	}
	for c := uintptr(0); ; c++ {
		if keep[c] {
			continue
		}
		err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the last capability
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	groups := make([]int, len(j.Groups))
	for i, g := range j.Groups {
		groups[i] = int(g)
	}
	// Package syscall changes the ids of every thread of the process.
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(int(j.GID), int(j.GID), int(j.GID)); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if j.UID != 0 {
		if err := syscall.Setresuid(int(j.UID), int(j.UID), int(j.UID)); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
	}
	// Per thread: this one, which executes the program.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	// Fail closed: root must be out of reach now.
	if err := syscall.Setresuid(0, 0, 0); j.UID != 0 && err == nil {
		return errors.New("could become root again after dropping to the VM's user")
	}
	return nil
}
