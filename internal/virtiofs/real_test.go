package virtiofs

// Tests with the real kernel and a real virtiofsd (on Debian 12 the C one,
// from qemu-system-common). They need root: to bind-mount, and to run the
// daemon, which sandboxes itself in namespaces.

import (
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"

	"context"
	"errors"
	"fmt"
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
	jailDir := filepath.Join(dir, "jail")
	shares := []Share{
		{Tag: TagImage, Dir: view, Socket: filepath.Join(dir, "image.sock"), Group: group.Name, ReadOnly: true, JailDir: jailDir},
		{Tag: TagEtc, Dir: etc, Socket: filepath.Join(dir, "etc.sock"), Group: group.Name, JailDir: jailDir},
	}
	// A socket left behind by an earlier daemon must not pass for the new one's.
	if err := os.WriteFile(shares[1].Socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var procs []*Process
	for _, s := range shares {
		p, err := Start(ctx, d, s, nil)
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

	// The image's daemon: a VMM connects (the daemon sandboxes itself
	// then: see confined), then goes away.
	conn, err := net.Dial("unix", shares[0].Socket)
	if err != nil {
		t.Fatalf("connecting to %s: %v; the daemon said: %s", shares[0].Socket, err, procs[0].out)
	}
	confined(t, procs[0], true)
	confined(t, procs[1], false)
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

// confined checks a running daemon, from outside: its threads, every one,
// have no capability beyond JailCaps, not in their bounding sets either
// (the C daemon leaves a thread it made before sandboxing itself with all
// it had: the jail is what limits that one), and once sandboxed its main
// thread keeps exactly Caps, under its seccomp filter;
// it is process 1 of its own PID namespace, in mount and network
// namespaces of its own; and, once a VMM has connected, its root is the
// shared directory (its chroot sandbox).
func confined(t *testing.T, p *Process, connected bool) {
	t.Helper()
	var final, allowed uint64 // what the daemon keeps once sandboxed, and may ever have
	for _, c := range Caps(p.Share) {
		final |= 1 << capNumber[c]
	}
	for _, c := range JailCaps(p.Share) {
		allowed |= 1 << capNumber[c]
	}
	pid := strconv.Itoa(p.cmd.Process.Pid)
	if connected { // it sandboxes itself just after the connection
		want := fmt.Sprintf("CapEff:\t%016x\n", final)
		var root, status string
		for i := 0; i < 100 && (root != p.Share.Dir || !strings.Contains(status, want)); i++ {
			time.Sleep(20 * time.Millisecond)
			root, _ = os.Readlink("/proc/" + pid + "/root")
			b, _ := os.ReadFile("/proc/" + pid + "/status")
			status = string(b)
		}
		if root != p.Share.Dir {
			t.Errorf("share %s: the daemon's root is %q, want %s; it said: %s", p.Share.Tag, root, p.Share.Dir, p.out)
		}
		if !strings.Contains(status, want) || !strings.Contains(status, "Seccomp:\t2\n") {
			t.Errorf("share %s: the sandboxed daemon's status lacks %q or its seccomp filter:\n%s", p.Share.Tag, want, status)
		}
	}
	tasks, _ := os.ReadDir("/proc/" + pid + "/task")
	if len(tasks) == 0 {
		t.Fatalf("share %s: no threads of pid %s", p.Share.Tag, pid)
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + pid + "/task/" + task.Name() + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":\t")
			switch k {
			case "CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh":
				if k == "CapEff" {
					t.Logf("share %s: thread %s: CapEff %s", p.Share.Tag, task.Name(), v)
				}
				caps, err := strconv.ParseUint(v, 16, 64)
				if err != nil || caps&^allowed != 0 {
					t.Errorf("share %s: thread %s has %s %s, beyond %016x", p.Share.Tag, task.Name(), k, v, allowed)
				}
			case "NSpid": // a thread's id, in the host's PID namespace and in its own
				if f := strings.Fields(v); task.Name() == pid && (len(f) != 2 || f[1] != "1") {
					t.Errorf("share %s: NSpid %q, want process 1 of its own PID namespace", p.Share.Tag, v)
				}
			}
		}
	}
	for _, ns := range []string{"mnt", "net", "pid"} {
		theirs, _ := os.Readlink("/proc/" + pid + "/ns/" + ns)
		ours, _ := os.Readlink("/proc/self/ns/" + ns)
		if theirs == ours {
			t.Errorf("share %s: the daemon shares the host's %s namespace", p.Share.Tag, ns)
		}
	}
}

// capNumber are the numbers of the capabilities Caps names.
var capNumber = map[string]uint{
	"chown": unix.CAP_CHOWN, "dac_override": unix.CAP_DAC_OVERRIDE, "fowner": unix.CAP_FOWNER,
	"fsetid": unix.CAP_FSETID, "setgid": unix.CAP_SETGID, "setuid": unix.CAP_SETUID,
	"sys_chroot": unix.CAP_SYS_CHROOT, "setpcap": unix.CAP_SETPCAP,
}

// TestStartRefusesWritableImage proves a read-only share is never served
// from a directory that is not on a read-only mount: a missing view fails
// closed, before any daemon starts.
func TestStartRefusesWritableImage(t *testing.T) {
	d := realDaemon(t)
	dir := t.TempDir()
	s := Share{Tag: TagImage, Dir: dir, Socket: filepath.Join(dir, "image.sock"), ReadOnly: true, JailDir: filepath.Join(dir, "jail")}
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
