package virtiofs

// Tests with the real kernel and a real virtiofsd (on Debian 12 the C one,
// from qemu-system-common). They need root: to bind-mount, and to run the
// daemon, which sandboxes itself in namespaces.

import (
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"

	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// mountView applies a ReadOnlyView of src at dst and unmounts it when the
// test ends.
func mountView(t *testing.T, src, dst string) *ReadOnlyView {
	t.Helper()
	v := &ReadOnlyView{Src: src, Dst: dst}
	if err := v.Apply(); err != nil {
		t.Fatalf("%s: %v", v, err)
	}
	t.Cleanup(func() {
		for {
			if m, _ := mountinfo.IsPoint(dst); !m {
				return
			}
			if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", dst, err)
				return
			}
		}
	})
	return v
}

// mountCount is how many mounts of this namespace are on path.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && mountinfo.Unescape(f[4]) == path {
			n++
		}
	}
	return n
}

// TestReadOnlyView proves the view refuses writes whatever asks (root
// included), is idempotent, and follows an image whose rootfs directory was
// replaced, without stacking mounts.
func TestReadOnlyView(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "rootfs")
	dst := filepath.Join(dir, "run", "images", "debian") // Apply creates it
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "os-release"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	v := mountView(t, src, dst)

	if got, want := v.String(), "mkdir -p "+dst+" && mount --bind -o ro,nosuid,nodev "+src+" "+dst; got != want {
		t.Errorf("String:\ngot  %s\nwant %s", got, want)
	}
	if err := CheckReadOnly(dst); err != nil {
		t.Errorf("CheckReadOnly(view): %v", err)
	}
	if err := CheckReadOnly(src); !errors.Is(err, ErrWritable) {
		t.Errorf("CheckReadOnly(rootfs): got %v, want ErrWritable", err)
	}
	for name, write := range map[string]func() error{
		"create": func() error { return os.WriteFile(filepath.Join(dst, "new"), nil, 0o644) },
		"write":  func() error { return os.WriteFile(filepath.Join(dst, "os-release"), []byte("two"), 0o644) },
		"chmod":  func() error { return os.Chmod(filepath.Join(dst, "os-release"), 0o777) },
		"remove": func() error { return os.Remove(filepath.Join(dst, "os-release")) },
	} {
		if err := write(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s in the view: got %v, want EROFS", name, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dst, &st); err != nil {
		t.Fatal(err)
	}
	if want := int64(unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV); st.Flags&want != want {
		t.Errorf("view's mount flags %#x lack ro, nosuid or nodev", st.Flags)
	}

	// Again: nothing changes.
	if err := v.Apply(); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if n := mountCount(t, dst); n != 1 {
		t.Errorf("after a second Apply %d mounts are on the view, want 1", n)
	}

	// The image is rebuilt: a new rootfs directory takes the old one's
	// place. The view must show the new one.
	next := filepath.Join(dir, "rootfs.new")
	if err := os.MkdirAll(next, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(next, "os-release"), []byte("rebuilt"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(src, filepath.Join(dir, "rootfs.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, src); err != nil {
		t.Fatal(err)
	}
	if err := v.Apply(); err != nil {
		t.Fatalf("Apply after the rebuild: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "os-release")); string(b) != "rebuilt" {
		t.Errorf("after the rebuild the view shows %q, want the new rootfs", b)
	}
	if n := mountCount(t, dst); n != 1 {
		t.Errorf("after the rebuild %d mounts are on the view, want 1", n)
	}
	if err := CheckReadOnly(dst); err != nil {
		t.Errorf("after the rebuild: %v", err)
	}
}

// realDaemon returns the installed virtiofsd.
func realDaemon(t *testing.T) Daemon {
	t.Helper()
	testenv.NeedRoot(t)
	d, err := Find()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}
	t.Logf("using %s", d)
	return d
}

// TestStartStop proves a real daemon serves a writable and a read-only
// share: it listens on its socket, which the group may connect to; it exits
// by itself when its VMM disconnects; and Stop ends one that waits.
func TestStartStop(t *testing.T) {
	d := realDaemon(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	etc := filepath.Join(dir, "etc")
	for _, p := range []string{rootfs, etc} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	view := filepath.Join(dir, "view")
	mountView(t, rootfs, view)
	group, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	shares := []Share{
		{Tag: TagImage, Dir: view, Socket: filepath.Join(dir, "image.sock"), Group: group.Name, ReadOnly: true},
		{Tag: TagEtc, Dir: etc, Socket: filepath.Join(dir, "etc.sock"), Group: group.Name},
	}
	// A socket left behind by an earlier daemon must not pass for the new one's.
	if err := os.WriteFile(shares[1].Socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var procs []*Process
	for _, s := range shares {
		var log bytes.Buffer
		p, err := Start(ctx, d, s, &log)
		if err != nil {
			t.Fatalf("Start %s: %v", s.Tag, err)
		}
		procs = append(procs, p)
		t.Cleanup(func() { p.Stop(time.Second) })
		fi, err := os.Stat(s.Socket)
		if err != nil {
			t.Fatalf("socket of %s: %v", s.Tag, err)
		}
		if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm()&0o060 != 0o060 {
			t.Errorf("socket of %s has mode %v, want a socket the group can use", s.Tag, fi.Mode())
		}
	}

	// The image's daemon: a VMM connects, then goes away.
	conn, err := net.Dial("unix", shares[0].Socket)
	if err != nil {
		t.Fatalf("connecting to %s: %v", shares[0].Socket, err)
	}
	conn.Close()
	select {
	case <-procs[0].Done():
	case <-time.After(5 * time.Second):
		t.Errorf("the image's daemon is still running 5 s after its VMM disconnected")
	}

	// The etc daemon still waits for its VMM: Stop ends it.
	start := time.Now()
	if err := procs[1].Stop(5 * time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("Stop took %v: SIGTERM did not end the daemon, SIGKILL did", d)
	}
	if err := procs[1].Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestStartRefusesWritableImage proves a read-only share is never served
// from a directory that is not on a read-only mount: a missing view fails
// closed, before any daemon starts.
func TestStartRefusesWritableImage(t *testing.T) {
	d := realDaemon(t)
	dir := t.TempDir()
	s := Share{Tag: TagImage, Dir: dir, Socket: filepath.Join(dir, "image.sock"), ReadOnly: true}
	p, err := Start(context.Background(), d, s, nil)
	if !errors.Is(err, ErrWritable) {
		if p != nil {
			p.Stop(time.Second)
		}
		t.Fatalf("Start on a writable directory: got %v, want ErrWritable", err)
	}
	if _, err := os.Stat(s.Socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a socket appeared (%v): a daemon was started", err)
	}
}
