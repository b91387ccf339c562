// Package imagetest gives tests a real Debian image, made by image.Build
// once and shared by every test and package of a run, and by later runs.
//
// The image is made in a cache directory, $MICROVM_TEST_STATE (default
// /var/cache/microvm-test/state), as STATE/images/debian. If it is there
// and was made by the recipe as it is now (its metadata names the recipe's
// version), it is used as it is. If it is missing, or was made by an
// older recipe (a change to package image bumps the recipe's version), it
// is made again only when MICROVM_TEST_IMAGE_BUILD=1 or CI is set, since
// that takes minutes and downloads about 100 MB; otherwise the test
// skips, saying why. A lock file makes concurrent test binaries wait for
// one build instead of racing. CI builds it once per run, in whichever
// package gets there first; a CI that keeps the cache directory between
// runs builds it once per recipe version.
//
// MICROVM_TEST_MIRROR overrides the Debian mirror.
package imagetest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// Name is the image Debian makes.
const Name = config.DefaultImage

// StateDir is the cache directory the image is made in.
func StateDir() string {
	if dir := os.Getenv("MICROVM_TEST_STATE"); dir != "" {
		return dir
	}
	return "/var/cache/microvm-test/state"
}

// Debian returns a host whose state directory holds the image Name, made
// by image.Build (see the package comment).
func Debian(t *testing.T) config.Host {
	t.Helper()
	dir := StateDir()
	host := config.Host{StateDir: dir, RunDir: filepath.Join(dir, "run")}
	why := current(host)
	if why == "" {
		return host
	}
	if os.Getenv("MICROVM_TEST_IMAGE_BUILD") != "1" && !testenv.CI() {
		t.Skipf("%s: set MICROVM_TEST_IMAGE_BUILD=1 to build it (some minutes, once)", why)
	}
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "debootstrap")

	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close() // and with it the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if current(host) == "" {
		return host // made by another test binary while this one waited
	}
	if _, err := os.Stat(host.ImageDir(Name)); err == nil {
		t.Logf("%s: removing it", why)
		if err := image.Remove(host, Name, nil); err != nil {
			t.Fatalf("removing the stale test image: %v", err)
		}
	}

	// Stop debootstrap cleanly before go test's own timeout kills the
	// binary and leaves it running.
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
		defer cancel()
	}
	start := time.Now()
	err = image.Build(ctx, host, Name, &lineLogger{t: t}, image.Options{Mirror: os.Getenv("MICROVM_TEST_MIRROR"), Boot: image.BootFiles})
	if ctx.Err() != nil {
		t.Fatalf("building the test image: %v (go test's -timeout is too short for a first build; use -timeout 30m)", err)
	}
	if err != nil {
		t.Fatalf("building the test image: %v", err)
	}
	t.Logf("built image %s in %s", Name, time.Since(start).Round(time.Second))
	return host
}

// current returns why the cached image cannot be used, or "" if it can.
func current(host config.Host) string {
	if _, err := os.Stat(host.ImageVmlinux(Name)); err != nil {
		return "no test image in " + host.StateDir
	}
	m, err := image.ReadMeta(host, Name)
	if err != nil {
		return err.Error()
	}
	if !m.Current(Name) {
		r, _ := image.FindRecipe(Name)
		return fmt.Sprintf("the test image in %s was made by recipe %s, not %s v%d", host.StateDir, m, r.Name, r.Version)
	}
	return ""
}

// lineLogger logs what is written to it, a line at a time.
type lineLogger struct {
	t   testing.TB
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.t.Log(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

// Private makes stateDir a state directory of the test's own that has the
// cached Debian image (Debian): its images directory holds read-only bind
// mounts of the cached image and of the cache's apt downloads, so that
// images the test declares are built and pruned in it alone, while
// packages are downloaded once per run. The mounts go when the test ends.
func Private(t *testing.T, stateDir string) config.Host {
	t.Helper()
	cache := Debian(t)
	h := config.Host{StateDir: stateDir}
	for _, m := range []struct {
		src, dst string
		flags    uintptr
	}{
		{cache.ImageDir(Name), h.ImageDir(Name), syscall.MS_RDONLY},
		{cache.PackageCache(), h.PackageCache(), 0},
	} {
		if err := os.MkdirAll(m.src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount(m.src, m.dst, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Unmount(m.dst, syscall.MNT_DETACH) })
		if m.flags != 0 {
			if err := syscall.Mount("", m.dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|m.flags, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	return h
}

// Declared builds the declared images of in ([image.NAME]) that are not
// built as in declares them, in in's state directory (Private makes one
// with the cached Debian image to build on). Their packages come from the
// Debian mirror, with apt's downloads kept in the cache. Like Debian, it
// builds only with CI or MICROVM_TEST_IMAGE_BUILD=1, and skips otherwise.
func Declared(t *testing.T, in *config.Infra) {
	t.Helper()
	todo, err := image.ToBuild(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(todo) == 0 {
		return
	}
	if os.Getenv("MICROVM_TEST_IMAGE_BUILD") != "1" && !testenv.CI() {
		t.Skipf("image %s is not built in %s: set MICROVM_TEST_IMAGE_BUILD=1 to build it (a minute, once)", todo[0].Name, in.Host.StateDir)
	}
	testenv.NeedRoot(t)
	for _, b := range todo {
		// The build's log is shown when it fails: a test that fails later
		// would bury its own messages under apt's.
		var log bytes.Buffer
		start := time.Now()
		err := image.BuildDeclared(t.Context(), in, b.Name, &log, image.Options{Mirror: os.Getenv("MICROVM_TEST_MIRROR"), Boot: image.BootFiles})
		if err != nil {
			t.Fatalf("building image %s: %v\n%s", b.Name, err, log.Bytes())
		}
		t.Logf("built image %s (%s) in %s", b.Name, b.Why, time.Since(start).Round(time.Second))
	}
}

// Busybox makes, in host's state directory, the image name of a root
// filesystem small enough to build on in a test: busybox as every
// command, an /etc/passwd with www-data, a fake kernel with its
// modules.dep (FakeVmlinux stands in for its uncompressed form). Images
// made from it can have files and commands, not packages (it has no apt),
// and boot nothing.
func Busybox(t *testing.T, host config.Host, name string) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "busybox", "chroot", "tar")
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		w.Write(body)
	}
	for _, d := range []string{"./", "bin/", "usr/", "usr/bin/", "usr/sbin/", "sbin/", "etc/", "etc/ssh/", "dev/", "proc/", "tmp/", "var/", "var/lib/", "boot/", "usr/lib/", "usr/lib/modules/", "usr/lib/modules/1.0-test/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin)
	for _, l := range []string{"bin/sh", "bin/echo", "bin/cat", "usr/bin/env", "bin/cp", "bin/rm", "bin/chown", "bin/chmod", "bin/mkdir"} {
		add(&tar.Header{Name: l, Typeflag: tar.TypeSymlink, Linkname: "/bin/busybox"}, nil)
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n"))
	add(&tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:\nwww-data:x:33:\n"))
	add(&tar.Header{Name: "etc/base-only", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("base\n"))
	add(&tar.Header{Name: "boot/vmlinuz-1.0-test", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("not a kernel"))
	add(&tar.Header{Name: "usr/lib/modules/1.0-test/modules.dep", Typeflag: tar.TypeReg, Mode: 0o644}, nil)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(t.TempDir(), "busybox.tar")
	if err := os.WriteFile(tarball, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := image.Import(t.Context(), host, name, tarball, nil, image.Options{Boot: FakeVmlinux}); err != nil {
		t.Fatal(err)
	}
}

// FakeVmlinux stands in for kernel.WriteVmlinux where the image's kernel
// is no kernel (Busybox).
func FakeVmlinux(h config.Host, name string) error {
	return os.WriteFile(h.ImageVmlinux(name), []byte("vmlinux"), 0o644)
}
