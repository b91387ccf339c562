package image

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// writeTree makes the entries of spec under dir: "path/" is a directory,
// "path -> target" a symlink, "path: text" a file. Parents are made as
// needed.
func writeTree(t *testing.T, dir string, spec []string) {
	t.Helper()
	for _, e := range spec {
		var err error
		switch {
		case strings.HasSuffix(e, "/"):
			err = os.MkdirAll(filepath.Join(dir, e), 0o755)
		case strings.Contains(e, " -> "):
			p, target, _ := strings.Cut(e, " -> ")
			if err = os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err == nil {
				err = os.Symlink(target, filepath.Join(dir, p))
			}
		default:
			p, text, _ := strings.Cut(e, ": ")
			if err = os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err == nil {
				err = os.WriteFile(filepath.Join(dir, p), []byte(text), 0o644)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readTree lists dir in writeTree's notation, sorted, for the entries
// that are not directories holding something.
func readTree(t *testing.T, dir string) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			got = append(got, rel+" -> "+target)
		case d.IsDir():
			if names, _ := os.ReadDir(path); len(names) == 0 {
				got = append(got, rel+"/")
			}
		default:
			b, _ := os.ReadFile(path)
			got = append(got, rel+": "+string(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	return got
}

// fakeRootfs is a root filesystem as debootstrap leaves it, reduced to what
// post-processing looks at, with a file of each kind it must handle.
var fakeRootfs = []string{
	"boot/vmlinuz-6.1.0-9-cloud-amd64: kernel",
	"boot/initrd.img-6.1.0-9-cloud-amd64: initrd",
	"initrd.img -> boot/initrd.img-6.1.0-9-cloud-amd64",
	"vmlinuz -> boot/vmlinuz-6.1.0-9-cloud-amd64",
	"lib -> usr/lib",
	"usr/lib/modules/6.1.0-9-cloud-amd64/modules.dep: ",
	"etc/fstab: # UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
	"etc/hostname: buildhost\n",
	"etc/resolv.conf: nameserver 192.168.1.1\n",
	"etc/machine-id: 0123456789abcdef0123456789abcdef\n",
	"etc/ssh/sshd_config: Include /etc/ssh/sshd_config.d/*.conf\n",
	"etc/ssh/sshd_config.d/",
	"etc/ssh/ssh_host_ed25519_key: private",
	"etc/ssh/ssh_host_ed25519_key.pub: public",
	"etc/ssh/ssh_host_rsa_key: private",
	"etc/ssh/ssh_host_rsa_key.pub: public",
	"root/.bashrc: PS1='# '\n",
	"home/",
	"var/lib/dbus/machine-id: 0123456789abcdef0123456789abcdef\n",
	"var/cache/apt/archives/bash_5.2_amd64.deb: deb",
	"var/cache/apt/archives/partial/",
	"var/cache/apt/pkgcache.bin: cache",
	"var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages: list",
	"var/lib/apt/lists/lock: ",
	"var/lib/apt/lists/partial/",
	"var/log/dpkg.log: log",
}

// wantRootfs is fakeRootfs after postProcess.
var wantRootfs = []string{
	"boot/vmlinuz-6.1.0-9-cloud-amd64: kernel",
	"etc/fstab: # UNCONFIGURED FSTAB FOR BASE SYSTEM\n# The image is read-only and shared; /tmp is each VM's own (added by microvm).\n" + TmpfsLine + "\n",
	"etc/hostname: localhost\n",
	"etc/machine-id: ",
	"etc/ssh/sshd_config.d/microvm.conf: " + sshdConfigText,
	"etc/ssh/sshd_config: Include /etc/ssh/sshd_config.d/*.conf\n",
	"home -> var/home",
	"lib -> usr/lib",
	"root -> var/root",
	"srv -> var/srv",
	"usr/lib/modules/6.1.0-9-cloud-amd64/modules.dep: ",
	"var/cache/apt/archives/partial/",
	"var/home/",
	"var/lib/apt/lists/lock: ",
	"var/lib/apt/lists/partial/",
	"var/lib/dbus/machine-id -> /etc/machine-id",
	"var/log/dpkg.log: log",
	"var/root/.bashrc: PS1='# '\n",
	"var/srv/",
	"vmlinuz -> boot/vmlinuz-6.1.0-9-cloud-amd64",
}

func TestPostProcess(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, fakeRootfs)
	if err := os.Chmod(filepath.Join(root, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Twice: the second run must change nothing.
	for run := 1; run <= 2; run++ {
		if err := postProcess(root); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if got := readTree(t, root); !slices.Equal(got, wantRootfs) {
			t.Errorf("run %d: got tree\n%s\nwant\n%s", run, quoteLines(got), quoteLines(wantRootfs))
		}
	}
	// The moved directory keeps its mode; a made one gets VarLinks' mode.
	for _, tt := range []struct {
		path string
		want fs.FileMode
	}{
		{"var/root", 0o700},
		{"var/srv", 0o755},
		{"etc/machine-id", 0o444},
	} {
		fi, err := os.Stat(filepath.Join(root, tt.path))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tt.want {
			t.Errorf("%s has mode %04o, want %04o", tt.path, got, tt.want)
		}
	}
}

// TestPostProcessEscapes proves that post-processing never writes through a
// symlink that leads out of the tree, as an imported tarball may have.
func TestPostProcessEscapes(t *testing.T) {
	tests := []struct {
		name    string
		link    string // the symlink in the tree, to somewhere outside
		wantErr bool
	}{
		{"absolute fstab", "etc/fstab -> OUTSIDE/fstab", true},
		{"relative fstab", "etc/fstab -> ../../outside/fstab", true},
		{"sshd drop-in dir", "etc/ssh/sshd_config.d -> OUTSIDE", true},
		{"machine-id", "etc/machine-id -> OUTSIDE/machine-id", false}, // replaced, not followed
		{"resolv.conf", "etc/resolv.conf -> OUTSIDE/resolv.conf", false},
		{"root", "root -> OUTSIDE", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			root, outside := filepath.Join(dir, "rootfs"), filepath.Join(dir, "outside")
			writeTree(t, root, fakeRootfs)
			for _, name := range []string{"fstab", "machine-id", "resolv.conf", "microvm.conf"} {
				writeTree(t, outside, []string{name + ": the host's"})
			}
			p, _, _ := strings.Cut(tt.link, " -> ")
			os.RemoveAll(filepath.Join(root, p))
			writeTree(t, root, []string{strings.ReplaceAll(tt.link, "OUTSIDE", outside)})

			err := postProcess(root)
			t.Logf("postProcess: %v", err)
			if (err != nil) != tt.wantErr {
				t.Errorf("postProcess: %v, want error: %v", err, tt.wantErr)
			}
			want := []string{"fstab: the host's", "machine-id: the host's", "microvm.conf: the host's", "resolv.conf: the host's"}
			if got := readTree(t, outside); !slices.Equal(got, want) {
				t.Errorf("outside the tree: got %q, want %q", got, want)
			}
		})
	}
}

// testHost returns a host whose state lives in a new temporary directory.
func testHost(t *testing.T) config.Host {
	dir := t.TempDir()
	return config.Host{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run")}
}

// fakeImage makes the image name from fakeRootfs, through stage as Build
// and Import do, without debootstrap or root.
func fakeImage(t *testing.T, host config.Host, name string, boot func(config.Host, string) error) error {
	return stage(host, name, nil, boot, Meta{Source: "fake.tar"}, func(rootfs string) error {
		writeTree(t, rootfs, fakeRootfs)
		return nil
	})
}

func TestStage(t *testing.T) {
	host := testHost(t)
	var stagedAt string
	boot := func(staged config.Host, name string) error {
		// The boot files are made before the image is in place.
		if _, err := os.Stat(host.ImageDir(name)); err == nil {
			t.Errorf("boot hook: the image is in place already")
		}
		stagedAt = staged.ImageDir(name)
		if _, err := os.Stat(staged.ImageKernel(name)); err != nil {
			t.Errorf("boot hook: %v", err)
		}
		return os.WriteFile(staged.ImageVmlinux(name), []byte("vmlinux"), 0o644)
	}
	if err := fakeImage(t, host, "debian", boot); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stagedAt, host.ImagesDir()+"/.debian.new-") {
		t.Errorf("staged in %s, want a staging directory in %s", stagedAt, host.ImagesDir())
	}
	for _, p := range []string{host.ImageKernel("debian"), host.ImageVmlinux("debian")} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if got := readTree(t, host.ImageRootfs("debian")); !slices.Equal(got, wantRootfs) {
		t.Errorf("rootfs:\n%s\nwant\n%s", quoteLines(got), quoteLines(wantRootfs))
	}
	if got := names(t, host.ImagesDir()); !slices.Equal(got, []string{"debian"}) {
		t.Errorf("images dir holds %q, want only the image", got)
	}
	if m, err := ReadMeta(host, "debian"); err != nil || m.Source != "fake.tar" || m.Made.IsZero() || m.Current("debian") {
		t.Errorf("ReadMeta = %+v, %v; want the source, a time, and not current", m, err)
	}
}

func TestStageFailureLeavesNothing(t *testing.T) {
	tests := []struct {
		name string
		fill []string
		boot func(config.Host, string) error
		want string
	}{
		{"no kernel", []string{"etc/", "var/"}, nil, "no boot/vmlinuz-VERSION"},
		{"no modules.dep", []string{"etc/", "var/", "boot/vmlinuz-6.1.0-9-cloud-amd64: k", "lib/modules/6.1.0-9-cloud-amd64/"}, nil, "has no modules.dep"},
		{"kernel is a link out", []string{"etc/", "var/", "boot/vmlinuz-6.1.0-9-cloud-amd64 -> /etc/passwd", "lib/modules/6.1.0-9-cloud-amd64/modules.dep: "}, nil, "escapes"},
		{"boot hook fails", fakeRootfs, func(config.Host, string) error { return errors.New("no init") }, "no init"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := testHost(t)
			err := stage(host, "debian", nil, tt.boot, Meta{}, func(rootfs string) error {
				writeTree(t, rootfs, tt.fill)
				return nil
			})
			t.Logf("stage: %v", err)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %v, want one containing %q", err, tt.want)
			}
			if got := names(t, host.ImagesDir()); len(got) > 0 {
				t.Errorf("left behind: %q", got)
			}
		})
	}
}

// TestImmutable proves that an image is never replaced: Build and Import
// refuse, before doing anything, when the name is taken.
func TestImmutable(t *testing.T) {
	host := testHost(t)
	if err := fakeImage(t, host, "debian", nil); err != nil {
		t.Fatal(err)
	}
	before := readTree(t, host.ImageDir("debian"))
	want := "image debian exists; remove it with `microvm image rm debian` first"
	for _, tt := range []struct {
		name string
		make func() error
	}{
		{"Build", func() error { return Build(t.Context(), host, "debian", nil, Options{}) }},
		{"Import", func() error { return Import(t.Context(), host, "debian", "/nonexistent.tar", nil, Options{}) }},
		{"stage", func() error { return fakeImage(t, host, "debian", nil) }},
	} {
		if err := tt.make(); err == nil || err.Error() != want {
			t.Errorf("%s: got error %v, want %q", tt.name, err, want)
		}
	}
	if got := readTree(t, host.ImageDir("debian")); !slices.Equal(got, before) {
		t.Errorf("the image changed")
	}
	if err := Build(t.Context(), host, "Debian", nil, Options{}); err == nil || !strings.Contains(err.Error(), "not an image name") {
		t.Errorf("Build(\"Debian\"): got %v, want a bad-name error", err)
	}
	if err := Build(t.Context(), host, "alpine", nil, Options{}); err == nil || !strings.Contains(err.Error(), "no recipe for an image called \"alpine\"; image build makes debian, debian-full") {
		t.Errorf("Build(\"alpine\"): got %v, want a no-recipe error", err)
	}
}

func TestList(t *testing.T) {
	host := testHost(t)
	if infos, err := List(host); err != nil || len(infos) != 0 {
		t.Errorf("List with no images dir = %v, %v; want nothing", infos, err)
	}
	for _, name := range []string{"ubuntu", "debian"} {
		if err := fakeImage(t, host, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A build in progress and a stray file are not images.
	writeTree(t, host.ImagesDir(), []string{".alpine.new-123/images/alpine/rootfs/etc/", "notes.txt: hi"})

	infos, err := List(host)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, info := range infos {
		got = append(got, info.Name)
		if info.Kernel != "6.1.0-9-cloud-amd64" || info.Size <= 0 || info.Created.IsZero() || info.Meta.String() != "imported from fake.tar" {
			t.Errorf("List: %+v", info)
		}
	}
	if want := []string{"debian", "ubuntu"}; !slices.Equal(got, want) {
		t.Errorf("List names = %q, want %q", got, want)
	}
}

func TestRemove(t *testing.T) {
	host := testHost(t)
	if err := fakeImage(t, host, "debian", nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		inUse []string
		want  string
	}{
		{"debian", []string{"vm1", "vm2"}, "image debian is used by vm1, vm2; change their image or remove them first"},
		{"debian", []string{"vm1"}, "image debian is used by vm1; change its image or remove it first"},
		{"ubuntu", nil, "image ubuntu does not exist"},
		{"../x", nil, `"../x" is not an image name`},
	} {
		if err := Remove(host, tt.name, tt.inUse); err == nil || err.Error() != tt.want {
			t.Errorf("Remove(%q, %q): got %v, want %q", tt.name, tt.inUse, err, tt.want)
		}
	}
	if _, err := os.Stat(host.ImageRootfs("debian")); err != nil {
		t.Fatalf("a refused Remove removed: %v", err)
	}
	if err := Remove(host, "debian", nil); err != nil {
		t.Fatal(err)
	}
	if got := names(t, host.ImagesDir()); len(got) > 0 {
		t.Errorf("after Remove, the images dir holds %q", got)
	}
}

// TestRemoveMounted proves that Remove refuses while a VM that left the
// model still has the image mounted.
func TestRemoveMounted(t *testing.T) {
	testenv.NeedRoot(t) // to mount
	host := testHost(t)
	if err := fakeImage(t, host, "debian", nil); err != nil {
		t.Fatal(err)
	}
	view := host.ImageView("debian")
	if err := os.MkdirAll(view, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(host.ImageRootfs("debian"), view, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(view, syscall.MNT_DETACH) })
	want := "image debian is mounted at " + view + "; stop the VMs that use it first"
	if err := Remove(host, "debian", nil); err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	return got
}

// quoteLines shows a tree listing one entry a line, quoted.
func quoteLines(entries []string) string {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString("\t" + strconv.Quote(e) + "\n")
	}
	return b.String()
}
