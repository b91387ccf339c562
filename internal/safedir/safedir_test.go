package safedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// tree makes a directory "guest" as a hostile guest could leave it, and an
// "outside" directory with a file the host must never read or change.
func tree(t *testing.T) (guest, secret string) {
	t.Helper()
	top := t.TempDir()
	guest, outside := filepath.Join(top, "guest"), filepath.Join(top, "outside")
	for _, d := range []string{guest, outside, filepath.Join(guest, "ssh")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret = filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("host secret\n"), 0o600)
	for link, to := range map[string]string{
		"out":           outside,                     // a directory outside
		"secret-link":   secret,                      // a file outside
		"inside-link":   filepath.Join(guest, "ssh"), // a directory inside: still not followed
		"relative-link": "ssh",
		"dotdot":        "../outside",
	} {
		if err := os.Symlink(to, filepath.Join(guest, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(guest, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(guest, "ssh", "key"), []byte("key\n"), 0o600)
	return guest, secret
}

func TestRefusesSymlinks(t *testing.T) {
	guest, secret := tree(t)
	d, err := Open(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"secret-link", "out/secret", "inside-link/key", "relative-link/key", "dotdot/secret", "../outside/secret", "/etc/passwd"} {
		if b, err := d.ReadFile(name); err == nil {
			t.Errorf("ReadFile(%q) = %q; want an error", name, b)
		}
		if err := d.WriteFile(name+"x", []byte("x"), 0o644); err == nil && !strings.HasSuffix(name, "link") {
			t.Errorf("WriteFile(%qx) succeeded", name)
		}
		if sub, err := d.MkdirAll(name+"/sub", 0o755); err == nil {
			sub.Close()
			t.Errorf("MkdirAll(%q/sub) succeeded", name)
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "host secret\n" {
		t.Errorf("the secret outside changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(secret), "sub")); err == nil {
		t.Error("MkdirAll made a directory outside")
	}
	// The one that works: a real file on a real path.
	if b, err := d.ReadFile("ssh/key"); err != nil || string(b) != "key\n" {
		t.Errorf("ReadFile(ssh/key) = %q, %v", b, err)
	}
}

// TestWriteReplacesSymlink: writing a name that is a symlink replaces the
// link and leaves its target alone.
func TestWriteReplacesSymlink(t *testing.T) {
	guest, secret := tree(t)
	d, _ := Open(guest)
	defer d.Close()
	if err := d.WriteFile("secret-link", []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "host secret\n" {
		t.Errorf("wrote through the symlink: secret is %q", b)
	}
	fi, err := os.Lstat(filepath.Join(guest, "secret-link"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Errorf("secret-link is %v, %v; want a regular file 0644", fi.Mode(), err)
	}
	if created, err := d.WriteNew("ssh/key", []byte("other"), 0o600); created || err != nil {
		t.Errorf("WriteNew over an existing file: %v, %v", created, err)
	}
	if created, err := d.WriteNew("ssh/new", []byte("new"), 0o600); !created || err != nil {
		t.Errorf("WriteNew: %v, %v", created, err)
	}
}

// asRoot reports whether the test runs as root, for its parts that need
// it: on a laptop they are left out, said in the log; under CI they must run.
func asRoot(t *testing.T) bool {
	if os.Geteuid() == 0 {
		return true
	}
	if testenv.CI() {
		t.Fatal("needs root (CI is set)")
	}
	t.Log("not root: the parts that need root are left out")
	return false
}

// TestSpecialFiles: a FIFO or a device node is refused at once, neither
// waited on nor read.
func TestSpecialFiles(t *testing.T) {
	guest, _ := tree(t)
	if asRoot(t) {
		// /dev/zero's numbers: reading it would never end.
		if err := unix.Mknod(filepath.Join(guest, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := Open(guest)
	defer d.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, name := range []string{"fifo", "zero", "ssh"} {
			if _, err := d.ReadFile(name); err == nil {
				t.Errorf("ReadFile(%q) succeeded", name)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFile blocked on a special file")
	}
}

// TestRemoveAll removes a tree without following its symlinks.
func TestRemoveAll(t *testing.T) {
	guest, secret := tree(t)
	parent, _ := Open(filepath.Dir(guest))
	defer parent.Close()
	if err := parent.RemoveAll("guest"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(guest); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("guest still there: %v", err)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Errorf("the secret outside went too: %v", err)
	}
	if err := parent.RemoveAll("guest"); err != nil {
		t.Errorf("RemoveAll of a missing name: %v", err)
	}
}

func TestOpenPrivate(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	if asRoot(t) {
		if d, err := OpenPrivate(dir); err != nil {
			t.Errorf("OpenPrivate of root's 0700 directory: %v", err)
		} else {
			d.Close()
		}
		os.Chown(dir, 1, 1)
		if _, err := OpenPrivate(dir); err == nil {
			t.Error("OpenPrivate accepted a directory another user owns")
		}
		os.Chown(dir, 0, 0)
	}
	os.Chmod(dir, 0o777)
	if _, err := OpenPrivate(dir); err == nil {
		t.Error("OpenPrivate accepted a world-writable directory")
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	if _, err := Open(link); err == nil {
		t.Error("Open followed a symlink as its last component")
	}
}

// TestWritePrivate: a record is written and read only in a directory
// nobody but root may write, and replaced whole, not through a symlink
// planted in its place.
func TestWritePrivate(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)
	record := filepath.Join(dir, "host.json")
	os.Symlink(victim, record)
	if err := WritePrivate(record, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the symlink's target: %q, %v; want it unchanged", b, err)
	}
	if b, err := os.ReadFile(record); err != nil || string(b) != "new" {
		t.Errorf("the record: %q, %v; want %q", b, err, "new")
	}
	if b, err := ReadPrivate(record); err != nil || string(b) != "new" {
		t.Errorf("ReadPrivate: %q, %v; want %q", b, err, "new")
	}
	os.Chmod(dir, 0o777)
	if err := WritePrivate(record, []byte("newer"), 0o644); err == nil {
		t.Error("WritePrivate wrote into a world-writable directory")
	}
	if _, err := ReadPrivate(record); err == nil {
		t.Error("ReadPrivate read a record anyone could have written")
	}
}

// TestPassThrough: another user reads a file it knows the name of in a
// private directory of mode 0711, as `microvm status` reads a VM's
// started.json without root, and cannot list the directory.
func TestPassThrough(t *testing.T) {
	testenv.NeedRoot(t)
	dir := filepath.Join(testenv.ShortDir(t), "run")
	os.Chmod(filepath.Dir(dir), 0o755)
	d, err := MakePrivate(dir, 0o711)
	if err != nil {
		t.Fatal(err)
	}
	d.WriteFile("record", []byte("hello"), 0o644)
	d.Close()
	err = testenv.AsUser(65534, 65534, nil, func() error {
		d, err := OpenPrivate(dir)
		if err != nil {
			return err
		}
		defer d.Close()
		if b, err := d.ReadFile("record"); err != nil || string(b) != "hello" {
			return fmt.Errorf("ReadFile: %q, %v", b, err)
		}
		if _, err := d.Names(); err == nil {
			return errors.New("listed a 0711 directory")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	// The process itself (its main thread, which ps and userdel see)
	// is still root's.
	if b, _ := os.ReadFile("/proc/self/status"); !strings.Contains(string(b), "\nUid:\t0\t") {
		t.Errorf("the test process is no longer root's:\n%s", b)
	}
}

func TestWalk(t *testing.T) {
	guest, _ := tree(t)
	d, _ := Open(guest)
	defer d.Close()
	seen := map[string]int{}
	if err := d.Walk(func(depth int, name string, st *unix.Stat_t) error {
		seen[fmt.Sprintf("%d %s", depth, name)]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Through out, dotdot or inside-link it would see secret, or key again.
	want := map[string]int{"1 out": 1, "1 secret-link": 1, "1 inside-link": 1, "1 relative-link": 1, "1 dotdot": 1, "1 fifo": 1, "1 ssh": 1, "2 key": 1}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("Walk saw %v, want %v", seen, want)
	}
	// fs.SkipDir: not into ssh.
	clear(seen)
	d.Walk(func(depth int, name string, st *unix.Stat_t) error {
		seen[fmt.Sprintf("%d %s", depth, name)]++
		if name == "ssh" {
			return fs.SkipDir
		}
		return nil
	})
	if seen["2 key"] != 0 {
		t.Error("Walk went into a directory its function skipped")
	}
}

// TestNeverOpens: a FIFO or a device node a guest planted where the host
// reads or appends is refused without being opened at all, as inotify
// sees it. Opening is itself the harm: a watchdog device starts its
// countdown when opened, and a FIFO's writer learns that a reader came.
func TestNeverOpens(t *testing.T) {
	guest := testenv.DeviceDir(t)
	// /dev/null's numbers (c 1 3), as a guest made them at the place of
	// the SSH host key.
	if err := unix.Mknod(filepath.Join(guest, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(guest, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(filepath.Join(guest, "null"), os.O_RDONLY, 0); err != nil {
		t.Fatalf("the device opens (the test's premise): %v", err)
	} else {
		f.Close()
	}
	d, err := Open(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"null", "fifo"} {
		for _, op := range []struct {
			what string
			do   func() error
		}{
			{"ReadFile", func() error { _, err := d.ReadFile(name); return err }},
			{"Open", func() error { f, err := d.Open(name); f.Close(); return err }},
			{"OpenAppend", func() error { f, err := d.OpenAppend(name, 0o644); f.Close(); return err }},
			{"Lock", func() error { f, err := d.Lock(name, false); f.Close(); return err }},
		} {
			var err error
			opened := testenv.Opened(t, guest, func() { err = op.do() })
			if !errors.Is(err, ErrNotRegular) {
				t.Errorf("%s(%s): %v; want %v", op.what, name, err, ErrNotRegular)
			}
			if len(opened) > 0 {
				t.Errorf("%s(%s) opened %v", op.what, name, opened)
			}
		}
	}
	// A regular file is still opened (and inotify sees that: the check
	// above can fail).
	os.WriteFile(filepath.Join(guest, "file"), []byte("x"), 0o644)
	opened := testenv.Opened(t, guest, func() {
		if b, err := d.ReadFile("file"); err != nil || string(b) != "x" {
			t.Errorf("ReadFile(file) = %q, %v", b, err)
		}
	})
	if !slices.Contains(opened, "file") {
		t.Errorf("inotify saw %v opened; want file", opened)
	}
	// OpenAppend and Lock make a missing file, and open nothing else.
	for _, name := range []string{"new", "lock"} {
		f, err := d.OpenAppend(name, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if fi, err := os.Lstat(filepath.Join(guest, name)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want a regular file 0600", name, fi.Mode(), err)
		}
	}
}

// depth is the depth of the guest-made chain of directories the deep
// tests walk: 20,000 took 13 GiB, then failed with "too many open
// files", when each level kept a descriptor and a path of its own.
const depth = 20000

// TestDeepTree: a chain of 20,000 nested directories is walked and
// removed with a few descriptors (the process may open only 16 more than
// it has) and memory linear in its depth.
func TestDeepTree(t *testing.T) {
	top := t.TempDir()
	testenv.Chain(t, top, "d", depth)
	d, err := Open(top)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	base := testenv.OpenFiles(t)
	restore := testenv.LimitFiles(t, 16)
	var levels, most int
	var leaf bool
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err = d.Walk(func(depth int, name string, st *unix.Stat_t) error {
		if name == "d" {
			levels = max(levels, depth)
		}
		if name == "leaf" {
			leaf = true
		}
		if depth%1000 == 0 {
			most = max(most, testenv.OpenFiles(t)-base)
		}
		return nil
	})
	runtime.ReadMemStats(&after)
	restore()
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if levels != depth || !leaf {
		t.Errorf("Walk went %d levels deep (leaf seen: %v), want %d and the leaf", levels, leaf, depth)
	}
	if most > 4 {
		t.Errorf("Walk held %d descriptors more than before, want a few", most)
	}
	// Linear: a few hundred bytes a level (with a path per level, or a
	// full name per entry, it is gigabytes).
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(depth*2<<10); got > limit {
		t.Errorf("Walk allocated %d bytes in all, want under %d (2 KiB a level)", got, limit)
	}
	t.Logf("Walk: %d bytes allocated in all, %d descriptors more at most", after.TotalAlloc-before.TotalAlloc, most)

	restore = testenv.LimitFiles(t, 16)
	runtime.ReadMemStats(&before)
	err = d.RemoveAll("d")
	runtime.ReadMemStats(&after)
	restore()
	if err != nil {
		t.Fatalf("RemoveAll: %v", err)
	}
	if names, _ := d.Names(); len(names) != 0 {
		t.Errorf("left after RemoveAll: %v", names)
	}
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(depth*2<<10); got > limit {
		t.Errorf("RemoveAll allocated %d bytes in all, want under %d (2 KiB a level)", got, limit)
	}
	t.Logf("RemoveAll: %d bytes allocated in all", after.TotalAlloc-before.TotalAlloc)
}

// TestWalkMoved: a directory the guest moves up while the walk is below
// it makes the walk fail; it never climbs out of the tree by "..".
func TestWalkMoved(t *testing.T) {
	top := t.TempDir()
	guest := filepath.Join(top, "guest")
	os.MkdirAll(filepath.Join(guest, "a", "b", "c"), 0o755)
	d, err := Open(guest)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var seen []string
	err = d.Walk(func(depth int, name string, st *unix.Stat_t) error {
		seen = append(seen, name)
		if name == "c" {
			// The walk is in b: b moves to the top, so b/.. is guest, not a.
			if err := os.Rename(filepath.Join(guest, "a", "b"), filepath.Join(guest, "b")); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "moved while") {
		t.Errorf("Walk: %v; want an error that the tree moved", err)
	}
	if slices.Contains(seen, "outside") || slices.Contains(seen, "guest") {
		t.Errorf("Walk climbed out: %v", seen)
	}
}
