package image_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
)

// declare returns a model of host with the images of toml.
func declare(t *testing.T, host config.Host, toml string) *config.Infra {
	t.Helper()
	var b strings.Builder
	b.WriteString("[host]\nuplink = \"eth0\"\n")
	b.WriteString("state_dir = \"" + host.StateDir + "\"\nrun_dir = \"" + host.RunDir + "\"\n")
	if host.Storage == config.StorageZFS {
		b.WriteString("storage = \"zfs\"\nzfs_dataset = \"" + host.ZFSDataset + "\"\n")
	}
	b.WriteString("[vm.vm1]\nsubnet = \"10.1.0.0/24\"\nimage = \"web\"\n")
	b.WriteString(toml)
	in, err := config.Parse(filepath.Join(t.TempDir(), "infra.toml"), []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

const webV1 = `
[image.web]
from = "base"
run = ["echo built > /var/lib/built", "mkdir -p /var/www && echo page > /var/www/index.html"]
[image.web.files]
"/etc/web.conf" = { content = "listen 80\n", mode = "0640", owner = "www-data" }
`

// TestDerive builds a declared image on an imported base, with each
// storage backend: the new version shares its base (a layer of only what
// it adds, or a ZFS clone), its guests see the union, a changed
// definition is a new version beside the old one, and the old one can be
// pruned once nothing needs it.
func TestDerive(t *testing.T) {
	testenv.NeedRoot(t)
	t.Run("dir", func(t *testing.T) {
		dir := t.TempDir()
		testDerive(t, config.Host{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run")})
	})
	t.Run("zfs", func(t *testing.T) {
		pool := zfstest.New(t)
		host := config.Host{StateDir: filepath.Join(pool.Dir, "state"), RunDir: filepath.Join(pool.Dir, "run"), Storage: config.StorageZFS, ZFSDataset: pool.Name + "/microvms"}
		for _, args := range [][]string{
			{"create", "-o", "mountpoint=" + host.StateDir, host.ZFSDataset},
			{"create", host.ImagesDataset()},
		} {
			if out, err := exec.Command("zfs", args...).CombinedOutput(); err != nil {
				t.Fatalf("zfs %s: %s", strings.Join(args, " "), out)
			}
		}
		testDerive(t, host)
	})
}

func testDerive(t *testing.T, host config.Host) {
	imagetest.Busybox(t, host, "base")
	in := declare(t, host, webV1)
	todo, err := image.ToBuild(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(todo) != 1 || todo[0].Name != "web" || todo[0].Why != "new" {
		t.Fatalf("ToBuild = %+v, want web, new", todo)
	}
	var log bytes.Buffer
	if err := image.BuildDeclared(t.Context(), in, "web", &log, image.Options{Boot: imagetest.FakeVmlinux}); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	r, err := image.Resolve(in, "web")
	if err != nil || !r.Built(host) {
		t.Fatalf("after the build, image.Resolve(web) = %+v, %v; want it built", r, err)
	}
	if todo, _ := image.ToBuild(in); len(todo) != 0 {
		t.Errorf("after the build, ToBuild = %+v, want nothing", todo)
	}
	m, err := image.ReadMeta(host, r.Dir)
	if err != nil || m.Image != "web" || m.From != "base" || m.Layered != (host.Storage != config.StorageZFS) {
		t.Errorf("meta = %+v, %v; want image web from base, layered only on dir", m, err)
	}

	// The guests' view is the union of base and what web adds; the base
	// itself is unchanged.
	lowers, err := image.Lowers(host, r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	view := filepath.Join(t.TempDir(), "view")
	if len(lowers) == 1 {
		err = (&virtiofs.ReadOnlyView{Src: lowers[0], Dst: view}).Apply()
	} else {
		err = (&virtiofs.OverlayView{Lowers: lowers, Dst: view}).Apply()
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(view, unix.MNT_DETACH)
	for path, want := range map[string]string{"etc/web.conf": "listen 80\n", "var/lib/built": "built\n", "etc/base-only": "base\n", "var/www/index.html": "page\n"} {
		if b, err := os.ReadFile(filepath.Join(view, path)); err != nil || string(b) != want {
			t.Errorf("%s in the view = %q, %v; want %q", path, b, err, want)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(view, "etc/web.conf"), &st); err != nil || st.Uid != 33 || st.Mode&0o777 != 0o640 {
		t.Errorf("etc/web.conf: owner %d mode %o (%v), want 33 and 0640", st.Uid, st.Mode&0o777, err)
	}
	if err := os.WriteFile(filepath.Join(view, "etc/x"), nil, 0o644); err == nil {
		t.Error("the view of a derived image is writable")
	}
	if _, err := os.Stat(filepath.Join(host.ImageRootfs("base"), "etc/web.conf")); err == nil {
		t.Error("building web wrote into its base")
	}

	// It shares its base: on dir, its layer holds only what it adds,
	// and its kernel is its base's file.
	if host.Storage != config.StorageZFS {
		var got []string
		filepath.Walk(host.ImageLayer(r.Dir), func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				rel, _ := filepath.Rel(host.ImageLayer(r.Dir), p)
				got = append(got, rel)
			}
			return nil
		})
		slices.Sort(got)
		if want := []string{"etc/web.conf", "var/lib/built", "var/www/index.html"}; !slices.Equal(got, want) {
			t.Errorf("the layer holds %q, want only %q", got, want)
		}
		a, _ := os.Stat(host.ImageVmlinux("base"))
		b, _ := os.Stat(host.ImageVmlinux(r.Dir))
		if !os.SameFile(a, b) {
			t.Error("the derived image has a copy of its base's kernel, not a link")
		}
	} else {
		out, err := exec.Command("zfs", "get", "-H", "-o", "value", "origin", host.ImageDataset(r.Dir)).Output()
		if want := host.ImageDataset("base") + "@" + storage.BaseSnapshot + "\n"; err != nil || string(out) != want {
			t.Errorf("zfs get origin = %q, %v; want %q", out, err, want)
		}
	}

	// A changed definition is another version; the old one stays until
	// nothing needs it.
	in2 := declare(t, host, webV1+"\"/etc/more\" = { content = \"more\\n\" }\n")
	todo, _ = image.ToBuild(in2)
	if len(todo) != 1 || todo[0].Why != "files changed" {
		t.Errorf("after a new file, ToBuild = %+v, want web, files changed", todo)
	}
	if err := image.BuildDeclared(t.Context(), in2, "web", &log, image.Options{Boot: imagetest.FakeVmlinux}); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	r2, _ := image.Resolve(in2, "web")
	if r2.Dir == r.Dir || !r.Built(host) || !r2.Built(host) {
		t.Fatalf("the new version %s should sit beside the old %s", r2.Dir, r.Dir)
	}
	old, err := image.Old(in2)
	if err != nil || !slices.Equal(old, []string{r.Dir}) {
		t.Errorf("Old = %q, %v; want %q", old, err, r.Dir)
	}
	if got := image.Prunable(host, old, map[string][]string{r.Dir: {"vm1"}}); len(got) != 0 {
		t.Errorf("Prunable with the old version in use = %q, want nothing", got)
	}
	if err := image.Remove(host, "base", nil); err == nil || !strings.Contains(err.Error(), "is the base of") {
		t.Errorf("removing the base of two versions: %v, want a refusal", err)
	}
	for _, d := range image.Prunable(host, old, nil) {
		if err := image.Remove(host, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	if r.Built(host) || !r2.Built(host) {
		t.Errorf("after the prune: old built %v, new built %v; want false, true", r.Built(host), r2.Built(host))
	}
	if err := image.Remove(host, r2.Dir, nil); err != nil {
		t.Fatal(err)
	}
	if err := image.Remove(host, "base", nil); err != nil {
		t.Errorf("removing the base once nothing is made from it: %v", err)
	}
}
