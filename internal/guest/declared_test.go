package guest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// put writes files into the tree at root: path -> content, or "-> TARGET"
// for a symlink, or "/" for a directory, or "" to remove.
func put(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, body := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		var err error
		switch {
		case body == "":
			err = os.RemoveAll(full)
		case body == "/":
			err = os.MkdirAll(full, 0o755)
		case strings.HasPrefix(body, "-> "):
			os.Remove(full)
			err = os.Symlink(strings.TrimPrefix(body, "-> "), full)
		default:
			err = os.WriteFile(full, []byte(body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// TestMerge seeds a VM from an image, lets both change, and merges the
// image's changes in: each case of the three-way merge, once.
func TestMerge(t *testing.T) {
	vm := testVM(t)
	image := makeImage(t)
	put(t, image, map[string]string{
		"etc/app.conf":       "v1\n",
		"etc/mine.conf":      "v1\n",
		"etc/gone.conf":      "v1\n",
		"etc/kept-gone.conf": "v1\n",
		"etc/deleted.conf":   "v1\n",
	})
	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	if kept, err := Merge(vm, image, "img.1"); err != nil || len(kept) > 0 {
		t.Fatalf("the first merge after the seed: kept %q, %v; want nothing to do", kept, err)
	}
	// The VM changes some files, the image others (and some of the same).
	put(t, vm.StateDir, map[string]string{
		"etc/mine.conf":      "the VM's\n",
		"etc/kept-gone.conf": "the VM's\n",
		"etc/deleted.conf":   "",
		"etc/hostname":       "vm1\n",
	})
	put(t, image, map[string]string{
		"etc/app.conf":                         "v2\n",
		"etc/mine.conf":                        "v2\n",
		"etc/gone.conf":                        "",
		"etc/kept-gone.conf":                   "",
		"etc/deleted.conf":                     "v2\n",
		"etc/nginx/nginx.conf":                 "new\n",
		"etc/systemd/system/x.wants/a.service": "-> /lib/systemd/system/a.service",
		"var/lib/nginx":                        "/",
		"etc/hostname":                         "image\n",
	})
	kept, err := Merge(vm, image, "img.2")
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"etc/app.conf":         "v2\n",       // changed by the image, not by the VM: updated
		"etc/mine.conf":        "the VM's\n", // changed by both: the VM's kept
		"etc/gone.conf":        "<open " + filepath.Join(vm.StateDir, "etc/gone.conf") + ": no such file or directory>",
		"etc/kept-gone.conf":   "the VM's\n",
		"etc/deleted.conf":     "<open " + filepath.Join(vm.StateDir, "etc/deleted.conf") + ": no such file or directory>", // the VM's choice
		"etc/nginx/nginx.conf": "new\n",
		"etc/hostname":         "vm1\n", // the program's, never merged
	} {
		if got := read(t, filepath.Join(vm.StateDir, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if got, _ := os.Readlink(filepath.Join(vm.EtcDir, "systemd/system/x.wants/a.service")); got != "/lib/systemd/system/a.service" {
		t.Errorf("the image's new symlink: %q", got)
	}
	if fi, err := os.Stat(filepath.Join(vm.VarDir, "lib/nginx")); err != nil || !fi.IsDir() {
		t.Errorf("the image's new directory in /var: %v", err)
	}
	slices.Sort(kept)
	if want := []string{"/etc/kept-gone.conf (the image removed it; the VM changed it)", "/etc/mine.conf"}; !slices.Equal(kept, want) {
		t.Errorf("kept %q, want %q", kept, want)
	}
	if kept, err := Merge(vm, image, "img.2"); err != nil || kept != nil {
		t.Errorf("merging the same image again: %q, %v; want nothing", kept, err)
	}
	c, ok, err := EtcDiff(vm)
	if err != nil || !ok || !slices.Contains(c.Changed, "/etc/mine.conf") || !slices.Contains(c.Removed, "/etc/deleted.conf") {
		t.Errorf("EtcDiff = %+v, %v, %v; want mine.conf changed, deleted.conf removed", c, ok, err)
	}
}

// TestMergeHostile: what the guest put in the merge's way is not
// followed, opened or written through, and the rest of the merge goes on.
func TestMergeHostile(t *testing.T) {
	vm := testVM(t)
	image := makeImage(t)
	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	if _, err := Merge(vm, image, "img.1"); err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	put(t, vm.StateDir, map[string]string{"etc/nginx": "-> " + outside})
	if err := syscall.Mkfifo(filepath.Join(vm.EtcDir, "fifo.conf"), 0o644); err != nil {
		t.Fatal(err)
	}
	put(t, image, map[string]string{
		"etc/nginx/nginx.conf": "new\n",
		"etc/fifo.conf":        "new\n",
		"etc/fine.conf":        "new\n",
	})
	kept, err := Merge(vm, image, "img.2")
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("the merge wrote through the guest's symlink: %v", entries)
	}
	if fi, _ := os.Lstat(filepath.Join(vm.EtcDir, "fifo.conf")); fi == nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Error("the guest's FIFO was replaced: the VM changed that path, it is its own")
	}
	if got := read(t, filepath.Join(vm.EtcDir, "fine.conf")); got != "new\n" {
		t.Errorf("the rest of the merge: fine.conf = %q", got)
	}
	if len(kept) < 2 {
		t.Errorf("kept %q; want the symlinked directory and the FIFO reported", kept)
	}
}

// TestWriteDeclared: files with their owners and modes, units enabled and
// disabled as systemctl does it (and the merge does not enable a disabled
// one again), run_once's unit while the list is there.
func TestWriteDeclared(t *testing.T) {
	vm := testVM(t)
	image := makeImage(t)
	put(t, image, map[string]string{
		"etc/passwd":                      "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n",
		"etc/group":                       "root:x:0:\nwww-data:x:33:\n",
		"lib/systemd/system/web.service":  "[Unit]\nDescription=web\n[Install]\nWantedBy=multi-user.target\nAlso=web.socket\nAlias=www.service\n",
		"lib/systemd/system/web.socket":   "[Socket]\nListenStream=80\n[Install]\nWantedBy=sockets.target\n",
		"lib/systemd/system/mail.service": "[Install]\nWantedBy=multi-user.target\n",
		"etc/systemd/system/multi-user.target.wants/mail.service": "-> /lib/systemd/system/mail.service",
	})
	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	if _, err := Merge(vm, image, "img.1"); err != nil {
		t.Fatal(err)
	}
	vm.Files = []config.File{
		{Path: "/srv/www/index.html", Content: "<h1>hi</h1>\n", Mode: 0o640, Owner: "www-data", Group: "www-data"},
		{Path: "/etc/app.conf", Content: "x=1\n", Mode: 0o600, Owner: "0", Group: "0"},
	}
	vm.Services = []string{"web.service"}
	vm.DisableServices = []string{"mail.service"}
	vm.RunOnce = []string{"echo first"}
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(vm.VarDir, "srv/www/index.html"), &st); err != nil || st.Uid != 33 || st.Gid != 33 || st.Mode&0o777 != 0o640 {
		t.Errorf("index.html: %d:%d %o, %v; want 33:33 0640", st.Uid, st.Gid, st.Mode&0o777, err)
	}
	for link, want := range map[string]string{
		"systemd/system/multi-user.target.wants/web.service":    "/lib/systemd/system/web.service",
		"systemd/system/sockets.target.wants/web.socket":        "/lib/systemd/system/web.socket",
		"systemd/system/www.service":                            "/lib/systemd/system/web.service",
		"systemd/system/multi-user.target.wants/" + runOnceUnit: "/etc/systemd/system/" + runOnceUnit,
	} {
		if got, err := os.Readlink(filepath.Join(vm.EtcDir, link)); got != want {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, want)
		}
	}
	disabled := filepath.Join(vm.EtcDir, "systemd/system/multi-user.target.wants/mail.service")
	if _, err := os.Lstat(disabled); err == nil {
		t.Error("mail.service is still enabled")
	}
	if got := read(t, filepath.Join(vm.EtcDir, runOnceScript)); !strings.Contains(got, "echo first\n") {
		t.Errorf("run_once's script: %q", got)
	}
	// The image changes; the merge leaves the disabled unit disabled.
	put(t, image, map[string]string{"etc/new.conf": "new\n"})
	if _, err := Merge(vm, image, "img.2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(disabled); err == nil {
		t.Error("the merge enabled mail.service again")
	}
	// A directory on the way that the guest made a symlink: nothing written.
	outside := t.TempDir()
	os.RemoveAll(filepath.Join(vm.VarDir, "srv/www"))
	os.Symlink(outside, filepath.Join(vm.VarDir, "srv/www"))
	if err := WriteDeclared(vm, image); err == nil {
		t.Error("WriteDeclared wrote through a symlinked directory without an error")
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("written outside the tree: %v", entries)
	}
	// run_once leaves the file: its unit and script go.
	os.Remove(filepath.Join(vm.VarDir, "srv/www"))
	vm.RunOnce = nil
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{runOnceScript, runOnceLink, "systemd/system/" + runOnceUnit} {
		if _, err := os.Lstat(filepath.Join(vm.EtcDir, p)); err == nil {
			t.Errorf("%s is still there after run_once left the file", p)
		}
	}
	// A unit the image lacks.
	vm.Services = []string{"nosuch.service"}
	if errs := UnitsMissing(vm, []string{image}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "unit nosuch.service is not in the VM's image") {
		t.Errorf("UnitsMissing = %v", errs)
	}
}
