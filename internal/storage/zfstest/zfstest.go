// Package zfstest gives a test a real ZFS pool of its own: zfs-fuse (the
// Debian package, ZFS in a user-space daemon over FUSE) with a pool in a
// sparse file, destroyed when the test ends.
//
// The daemon is the machine's, one for all pools: if one answers (started
// by test/zfs-fuse.sh in CI, or by the system), the test uses it; if none
// does, the test starts one and stops it at its end. Tests that use ZFS,
// in whatever package, take turns through a lock file, so that one never
// stops the daemon under another.
//
// Where kernel ZFS answers instead, the test uses it just the same.
//
// The root mount is made shared (SharedRoot), as on a host booted by
// systemd, so that zfs-fuse's mounts reach the commands tests run under
// `ip netns exec`.
//
// Requirements: root, the zfs and zpool commands, and, unless a daemon or
// kernel ZFS answers, zfs-fuse and /dev/fuse. Without them the test skips,
// or fails in CI (package testenv).
package zfstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// Lock is the file ZFS tests take turns with, across test processes.
const Lock = "/run/lock/microvm-zfstest.lock"

// PoolPrefix starts the name of every test pool, so test/zfs-fuse.sh stop
// can destroy those a killed test left behind, and no other.
const PoolPrefix = "mvtest"

// Pool is a throwaway pool.
type Pool struct {
	Name string // PoolPrefix and 8 hex digits, unique to the test
	// Dir is an empty directory for the test's mount points. The pool is
	// destroyed before Dir is removed; a directory of the test's own
	// (t.TempDir made after New) would be removed first, under the mounts.
	Dir string
}

// New makes a pool for t: a 256 MiB sparse file under Dir, with no mount
// point of its own (-m none), so that nothing is mounted but what the test
// mounts under Dir.
func New(t testing.TB) *Pool { return Pools(t, 1)[0] }

// Pools makes n pools for t, as New makes one: for a test of several
// hosts, each with its own pool. (New twice would wait for itself on the
// lock.)
func Pools(t testing.TB, n int) []*Pool {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "zfs", "zpool")
	lock(t)
	if err := SharedRoot(); err != nil {
		t.Fatal(err)
	}
	if !answers() { // no zfs-fuse running, and no kernel ZFS
		testenv.NeedCommands(t, "zfs-fuse")
		if _, err := os.Stat("/dev/fuse"); err != nil {
			testenv.Unavailable(t, "zfs-fuse needs /dev/fuse (modprobe fuse; in a container, pass the device in)")
		}
		startDaemon(t, t.TempDir())
	}
	var pools []*Pool
	for range n {
		pools = append(pools, create(t))
	}
	return pools
}

// create makes one pool, destroyed when t ends.
func create(t testing.TB) *Pool {
	t.Helper()
	p := &Pool{Dir: t.TempDir()}
	id := make([]byte, 4)
	rand.Read(id)
	p.Name = PoolPrefix + hex.EncodeToString(id)
	img := filepath.Join(p.Dir, "pool.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zpool", "create", "-m", "none", p.Name, img).CombinedOutput(); err != nil {
		t.Fatalf("zpool create %s: %s: %v", p.Name, strings.TrimSpace(string(out)), err)
	}
	t.Cleanup(func() {
		if err := Destroy(p.Name); err != nil {
			t.Error(err)
		}
	})
	return p
}

// Destroy destroys a pool. zfs-fuse sometimes answers "pool is busy" just
// after unmounting its datasets, and not a moment later (longer on a busy
// machine): retry for up to a minute.
func Destroy(pool string) error {
	var out []byte
	var err error
	for i := range 120 {
		out, err = exec.Command("zpool", "destroy", "-f", pool).CombinedOutput()
		if err == nil {
			return nil
		}
		if i%10 == 9 {
			// Still busy: force its datasets' mounts off, deepest first
			// (a lazily detached bind mount can keep one open).
			names, _ := exec.Command("zfs", "list", "-H", "-o", "name", "-r", pool).Output()
			list := strings.Fields(string(names))
			for j := len(list) - 1; j >= 0; j-- {
				exec.Command("zfs", "unmount", "-f", list[j]).Run()
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("zpool destroy -f %s: %s: %w", pool, strings.TrimSpace(string(out)), err)
}

// lock waits for the other ZFS tests and holds the lock until t ends.
func lock(t testing.TB) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(Lock), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(Lock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("locking %s: %v", Lock, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// SharedRoot makes the root mount shared, as systemd does at boot on
// every host it runs, unless it is. zfs-fuse mounts datasets in its own
// mount namespace; the commands the tests run under `ip netns exec` have a
// private copy of the mounts, which receives those mounts only when / is
// shared (it then is a slave of it). Without that, a dataset created under
// ip netns exec is not mounted where the command looks, and the program
// refuses to go on (see storage's visibleAt). Only the root mount changes,
// not the mounts below it.
func SharedRoot() error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// "27 1 254:0 / / rw,relatime shared:1 - ext4 ...": the fifth field
		// is the mount point, optional fields up to "-".
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != "/" {
			continue
		}
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				return nil
			}
		}
	}
	if out, err := exec.Command("mount", "--make-shared", "/").CombinedOutput(); err != nil {
		return fmt.Errorf("mount --make-shared /: %s: %w", strings.TrimSpace(string(out)), err)
	}
	return nil
}

// answers reports whether a zfs-fuse daemon answers the zpool command.
func answers() bool { return exec.Command("zpool", "list", "-H").Run() == nil }

// startDaemon starts zfs-fuse, and stops it when t ends. The kernel's FUSE caches are turned off (-a 0 -e 0; Debian's
// /etc/zfs/zfsrc sets an hour), as kernel ZFS has none that could show a
// file a rollback removed.
func startDaemon(t testing.TB, dir string) {
	t.Helper()
	logPath := filepath.Join(dir, "zfs-fuse.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command("zfs-fuse", "--no-daemon", "--no-kstat-mount", "--fuse-attr-timeout", "0", "--fuse-entry-timeout", "0")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting zfs-fuse: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // it unmounts its file systems and exits
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	for deadline := time.Now().Add(15 * time.Second); !answers(); {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("zfs-fuse exited at start:\n%s", b)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("zfs-fuse does not answer 15 s after starting:\n%s", b)
		}
	}
}
