package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// capNetRaw is the security.capability xattr of `setcap cap_net_raw=ep`:
// VFS_CAP_REVISION_2 with the effective flag, then permitted and
// inheritable sets, two 32-bit words each.
var capNetRaw = func() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x02000001)
	b = binary.LittleEndian.AppendUint32(b, 1<<unix.CAP_NET_RAW)
	return append(b, make([]byte, 12)...)
}()

// testTarball returns a root filesystem as a tar archive, with one member
// of each kind Import must keep; with a kernel or not, and with a member
// that tries to leave the directory or not.
func testTarball(t *testing.T, withKernel, escape bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(body)[:h.Size]); err != nil {
			t.Fatal(err)
		}
	}
	dir := func(name string, mode int64) { add(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}, "") }
	file := func(name string, mode int64, body string) {
		add(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode}, body)
	}
	dir("./", 0o755)
	for _, d := range []string{"etc/", "etc/ssh/", "var/", "var/lib/", "usr/", "usr/bin/", "usr/lib/", "dev/", "home/"} {
		dir(d, 0o755)
	}
	dir("root/", 0o700)
	file("root/.profile", 0o644, "profile")
	file("etc/machine-id", 0o444, "0123456789abcdef0123456789abcdef\n")
	file("etc/ssh/ssh_host_ed25519_key", 0o600, "private")
	add(&tar.Header{Name: "etc/resolv.conf", Typeflag: tar.TypeSymlink, Linkname: "/run/systemd/resolve/stub-resolv.conf"}, "")
	add(&tar.Header{Name: "usr/bin/ping", Typeflag: tar.TypeReg, Mode: 0o755,
		PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": string(capNetRaw),
			"SCHILY.xattr.user.microvm":        "kept",
		}}, "ping")
	add(&tar.Header{Name: "usr/bin/ping4", Typeflag: tar.TypeLink, Linkname: "usr/bin/ping"}, "")
	file("usr/bin/su", 0o4755, "su")
	add(&tar.Header{Name: "usr/sbin", Typeflag: tar.TypeSymlink, Linkname: "bin"}, "")
	add(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, "")
	add(&tar.Header{Name: "home/user/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1000}, "")
	add(&tar.Header{Name: "home/user/notes", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1000, Gid: 1000}, "notes")
	add(&tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}, "")
	if withKernel {
		dir("boot/", 0o755)
		file("boot/vmlinuz-6.1.0-9-cloud-amd64", 0o644, "kernel")
		for _, d := range []string{"usr/lib/modules/", "usr/lib/modules/6.1.0-9-cloud-amd64/"} {
			dir(d, 0o755)
		}
		file("usr/lib/modules/6.1.0-9-cloud-amd64/modules.dep", 0o644, "")
	}
	if escape {
		file("../escaped", 0o644, "out")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compressions write a tarball as users have them.
var compressions = []struct {
	name     string
	compress func(t *testing.T, b []byte) []byte
}{
	{"tar", func(t *testing.T, b []byte) []byte { return b }},
	{"tar.gz", func(t *testing.T, b []byte) []byte {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}},
	{"tar.zst", func(t *testing.T, b []byte) []byte {
		enc, _ := zstd.NewWriter(nil)
		defer enc.Close()
		return enc.EncodeAll(b, nil)
	}},
	{"tar.xz", func(t *testing.T, b []byte) []byte {
		cmd := exec.Command("xz", "--stdout")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz: %v", err)
		}
		return out
	}},
}

func TestImport(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "tar", "gzip", "xz", "zstd")
	for _, c := range compressions {
		t.Run(c.name, func(t *testing.T) {
			host := testHost(t)
			tarball := filepath.Join(t.TempDir(), "rootfs."+c.name)
			if err := os.WriteFile(tarball, c.compress(t, testTarball(t, true, false)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := Import(t.Context(), host, "imported", tarball, nil, Options{}); err != nil {
				t.Fatal(err)
			}
			root := host.ImageRootfs("imported")
			checkImported(t, root, true)
			if _, err := os.Stat(host.ImageKernel("imported")); err != nil {
				t.Error(err)
			}
		})
	}
}

// checkImported checks that what tar must keep was kept (extended
// attributes only if xattrs), and that the tree was post-processed.
func checkImported(t *testing.T, root string, xattrs bool) {
	t.Helper()
	stat := func(p string) *syscall.Stat_t {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(root, p), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	if st := stat("home/user/notes"); st.Uid != 1000 || st.Gid != 1000 || st.Mode&0o7777 != 0o640 {
		t.Errorf("home/user/notes: owner %d:%d mode %04o, want 1000:1000 0640", st.Uid, st.Gid, st.Mode&0o7777)
	}
	if st := stat("usr/bin/su"); st.Mode&0o7777 != 0o4755 {
		t.Errorf("usr/bin/su: mode %04o, want setuid 4755", st.Mode&0o7777)
	}
	if st := stat("dev/null"); st.Mode&syscall.S_IFMT != syscall.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("dev/null: mode %o rdev %d:%d, want the character device 1:3", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if a, b := stat("usr/bin/ping"), stat("usr/bin/ping4"); a.Ino != b.Ino {
		t.Errorf("usr/bin/ping4 is not a hard link to usr/bin/ping")
	}
	for name, want := range map[string]string{"security.capability": string(capNetRaw), "user.microvm": "kept"} {
		if !xattrs {
			break
		}
		buf := make([]byte, 64)
		n, err := unix.Getxattr(filepath.Join(root, "usr/bin/ping"), name, buf)
		if err != nil || string(buf[:n]) != want {
			t.Errorf("usr/bin/ping xattr %s = %q, %v; want %q", name, buf[:max(n, 0)], err, want)
		}
	}
	for link, want := range map[string]string{
		"usr/sbin": "bin",
		"root":     "var/root",
		"home":     "var/home",
	} {
		if got, err := os.Readlink(filepath.Join(root, link)); got != want {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, want)
		}
	}
	if st := stat("var/home/user"); st.Uid != 1000 {
		t.Errorf("var/home/user has owner %d, want 1000 (moved with /home)", st.Uid)
	}
	if st := stat("var/root"); st.Mode&0o7777 != 0o700 {
		t.Errorf("var/root has mode %04o, want 0700", st.Mode&0o7777)
	}
	if b, err := os.ReadFile(filepath.Join(root, "var/root/.profile")); string(b) != "profile" {
		t.Errorf("var/root/.profile = %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")); err == nil {
		t.Errorf("the SSH host key was kept")
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/machine-id")); err != nil || len(b) > 0 {
		t.Errorf("etc/machine-id = %q, %v; want empty", b, err)
	}
}

func TestImportFailureLeavesNothing(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "tar")
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"no kernel", testTarball(t, false, false), "VMs boot the image's own kernel"},
		{"a member leaves the directory", testTarball(t, true, true), "../escaped: Member name contains '..'"},
		{"not a tarball", []byte("hello"), "unpacking"},
		{"no /etc", func() []byte {
			var buf bytes.Buffer
			w := tar.NewWriter(&buf)
			w.WriteHeader(&tar.Header{Name: "hello", Typeflag: tar.TypeReg, Size: 2, Mode: 0o644})
			w.Write([]byte("hi"))
			w.Close()
			return buf.Bytes()
		}(), "it has no /etc directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host := testHost(t)
			tarball := filepath.Join(t.TempDir(), "rootfs.tar")
			if err := os.WriteFile(tarball, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			var progress bytes.Buffer
			err := Import(t.Context(), host, "imported", tarball, &progress, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q\nprogress:\n%s", err, tt.want, progress.String())
			}
			if got := names(t, host.ImagesDir()); len(got) > 0 {
				t.Errorf("left behind: %q", got)
			}
			if got := names(t, filepath.Dir(host.StateDir)); !slices.Equal(got, []string{"state"}) {
				t.Errorf("written beside the state directory: %q", got)
			}
		})
	}
}

// TestImportZFS: with storage = "zfs", an imported image is a dataset of
// its own, keeps what tar must keep, and is read-only; a failed import
// leaves no dataset; removing the image destroys its dataset.
func TestImportZFS(t *testing.T) {
	testenv.NeedCommands(t, "tar")
	pool := zfstest.New(t)
	host := config.Host{
		StateDir:   filepath.Join(pool.Dir, "state"),
		RunDir:     filepath.Join(pool.Dir, "run"),
		Storage:    "zfs",
		ZFSDataset: pool.Name + "/microvms",
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.tar"), filepath.Join(dir, "bad.tar")
	if err := os.WriteFile(good, testTarball(t, true, false), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, testTarball(t, false, false), 0o644); err != nil {
		t.Fatal(err)
	}

	// Before apply has made the datasets, an import is refused and
	// writes nothing where they will be mounted.
	err := Import(t.Context(), host, "imported", good, nil, Options{})
	if want := "microvm apply --host-only makes and mounts it"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("import before apply: got %v, want an error saying %q", err, want)
	}
	if _, err := os.Stat(host.StateDir); err == nil {
		t.Errorf("import before apply made %s", host.StateDir)
	}

	// What the host part of apply makes.
	for _, args := range [][]string{
		{"create", "-o", "mountpoint=" + host.StateDir, host.ZFSDataset},
		{"create", host.ImagesDataset()},
	} {
		if out, err := exec.Command("zfs", args...).CombinedOutput(); err != nil {
			t.Fatalf("zfs %s: %s", strings.Join(args, " "), out)
		}
	}
	datasets := func() string {
		out, err := exec.Command("zfs", "list", "-H", "-o", "name,mountpoint", "-r", host.ImagesDataset()).Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	if err := Import(t.Context(), host, "imported", bad, nil, Options{}); err == nil {
		t.Fatal("importing a tree without a kernel succeeded")
	} else {
		t.Logf("a failed import: %v", err)
	}
	if got, want := datasets(), host.ImagesDataset()+"\t"+host.ImagesDir()+"\n"; got != want {
		t.Errorf("after a failed import, datasets:\n%s\nwant\n%s", got, want)
	}

	if err := Import(t.Context(), host, "imported", good, nil, Options{}); err != nil {
		t.Fatal(err)
	}
	want := host.ImagesDataset() + "\t" + host.ImagesDir() + "\n" +
		host.ImageDataset("imported") + "\t" + host.ImageDir("imported") + "\n"
	if got := datasets(); got != want {
		t.Errorf("datasets:\n%s\nwant\n%s", got, want)
	}
	// zfs-fuse has no extended attributes (ENOTSUP), so file capabilities
	// are lost on it; OpenZFS keeps them.
	xattrs := unix.Lsetxattr(host.ImagesDir(), "user.microvm-test", []byte("1"), 0) == nil
	if !xattrs {
		t.Logf("%s has no extended attributes (zfs-fuse): not checking that they were kept", host.ImagesDir())
	}
	checkImported(t, host.ImageRootfs("imported"), xattrs)
	err = os.WriteFile(filepath.Join(host.ImageRootfs("imported"), "etc", "motd"), nil, 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the image: got %v, want EROFS", err)
	}
	if infos, err := List(host); err != nil || len(infos) != 1 || infos[0].Size <= 0 {
		t.Errorf("List: %+v, %v; want the image", infos, err)
	}

	if err := Remove(host, "imported", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := datasets(), host.ImagesDataset()+"\t"+host.ImagesDir()+"\n"; got != want {
		t.Errorf("after Remove, datasets:\n%s\nwant\n%s", got, want)
	}
	if got := names(t, host.ImagesDir()); len(got) > 0 {
		t.Errorf("after Remove, the images dir holds %q", got)
	}
}
