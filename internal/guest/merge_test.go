package guest

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// seeded returns a VM seeded from a new image with files (as put takes
// them), its first merge done, and the image's root.
func seeded(t *testing.T, files map[string]string) (*config.VM, string) {
	t.Helper()
	vm := testVM(t)
	image := makeImage(t)
	put(t, image, files)
	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	if kept, err := Merge(vm, image, "img"); err != nil || len(kept) > 0 {
		t.Fatalf("the first merge after the seed: kept %q, %v; want nothing to do", kept, err)
	}
	return vm, image
}

// state describes what the VM has at p (under its state directory) as
// put writes it: the content, "-> TARGET", "/" for a directory, "" for
// nothing, or "?" for anything else; and its mode and owner.
func state(t *testing.T, root, p string) (what string, mode uint32, uid, gid int) {
	t.Helper()
	var st syscall.Stat_t
	full := filepath.Join(root, p)
	if err := syscall.Lstat(full, &st); err != nil {
		return "", 0, 0, 0
	}
	mode, uid, gid = st.Mode&0o7777, int(st.Uid), int(st.Gid)
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return "/", mode, uid, gid
	case syscall.S_IFLNK:
		target, _ := os.Readlink(full)
		return "-> " + target, 0, uid, gid
	case syscall.S_IFREG:
		return read(t, full), mode, uid, gid
	}
	return "?", mode, uid, gid
}

// TestMergeCases: each rule of the three-way merge, one path each,
// between an image and its next version.
func TestMergeCases(t *testing.T) {
	vm, image := seeded(t, map[string]string{
		"etc/updated.conf":         "v1\n",
		"etc/mode.conf":            "same\n",
		"etc/link":                 "-> /v1",
		"etc/mine.conf":            "v1\n",
		"etc/mine-gone.conf":       "v1\n",
		"etc/removed.conf":         "v1\n",
		"etc/deleted.conf":         "v1\n",
		"etc/untouched.conf":       "v1\n",
		"etc/converged.conf":       "v1\n",
		"etc/old.d/a.conf":         "v1\n",
		"etc/old-kept.d/a.conf":    "v1\n",
		"etc/became-dir":           "file\n",
		"etc/became-file/x":        "v1\n",
		"etc/hosts":                "image v1\n",
		"etc/declared.conf":        "image v1\n",
		"var/lib/dpkg/status":      "Package: base\n",
		"var/lib/app/data":         "v1\n",
		"etc/systemd/system/x.tgt": "/",
	})
	// The VM's own changes.
	put(t, vm.StateDir, map[string]string{
		"etc/mine.conf":           "the VM's\n",
		"etc/mine-gone.conf":      "the VM's\n",
		"etc/deleted.conf":        "",
		"etc/untouched.conf":      "the VM's\n",
		"etc/converged.conf":      "v2\n",
		"etc/old-kept.d/own.conf": "the VM's\n",
		"etc/declared.conf":       "declared\n",
	})
	vm.Files = []config.File{{Path: "/etc/declared.conf"}}
	// The image's next version: what it removes, then what it adds.
	put(t, image, map[string]string{
		"etc/mine-gone.conf": "",
		"etc/removed.conf":   "",
		"etc/old.d":          "",
		"etc/old-kept.d":     "",
		"etc/became-dir":     "",
		"etc/became-file":    "",
		"var/lib/app":        "",
	})
	put(t, image, map[string]string{
		"etc/updated.conf":                       "v2\n",
		"etc/link":                               "-> /v2",
		"etc/mine.conf":                          "v2\n",
		"etc/deleted.conf":                       "v2\n",
		"etc/converged.conf":                     "v2\n",
		"etc/became-dir/x":                       "v2\n",
		"etc/became-file":                        "file\n",
		"etc/nginx/nginx.conf":                   "new\n",
		"etc/nginx/secret":                       "new\n",
		"etc/hosts":                              "image v2\n",
		"etc/declared.conf":                      "image v2\n",
		"var/lib/dpkg/status":                    "Package: base\n\nPackage: nginx\n",
		"var/lib/nginx":                          "/",
		"var/www/html/index":                     "hello\n",
		"etc/systemd/system/x.tgt/nginx.service": "-> /lib/systemd/system/nginx.service",
	})
	os.Chmod(filepath.Join(image, "etc/mode.conf"), 0o600)
	os.Chown(filepath.Join(image, "etc/nginx/secret"), 33, 33)
	syscall.Chmod(filepath.Join(image, "etc/nginx/secret"), 0o4750)
	kept, err := Merge(vm, image, "img") // the same name: an image built again
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, want string
		why        string
	}{
		{"etc/updated.conf", "v2\n", "changed by the image only: updated"},
		{"etc/link", "-> /v2", "a symlink changed by the image only: updated"},
		{"etc/mine.conf", "the VM's\n", "changed by both: the VM's kept"},
		{"etc/mine-gone.conf", "the VM's\n", "removed by the image, changed by the VM: kept"},
		{"etc/removed.conf", "", "removed by the image only: removed"},
		{"etc/deleted.conf", "", "removed by the VM, changed by the image: the VM's choice"},
		{"etc/untouched.conf", "the VM's\n", "not changed by the image: never looked at"},
		{"etc/converged.conf", "v2\n", "the VM has the image's new version already"},
		{"etc/old.d", "", "a directory the image removed, empty once its files went: removed"},
		{"etc/old-kept.d/own.conf", "the VM's\n", "a directory the image removed, with the VM's file in it: kept"},
		{"etc/old-kept.d/a.conf", "", "the image's file in it: removed"},
		{"etc/became-dir/x", "v2\n", "a file the image made a directory"},
		{"etc/became-file", "file\n", "a directory the image made a file"},
		{"etc/nginx/nginx.conf", "new\n", "added by the image, with its directory"},
		{"etc/hosts", "image v1\n", "managed by the program: never merged"},
		{"etc/declared.conf", "declared\n", "declared in infra.toml: never merged"},
		{"var/lib/dpkg/status", "Package: base\n\nPackage: nginx\n", "in /var too"},
		{"var/lib/app", "", "a tree the image removed from /var"},
		{"var/lib/nginx", "/", "a directory added to /var"},
		{"var/www/html/index", "hello\n", "a file added to /var, with its directories"},
		{"etc/systemd/system/x.tgt/nginx.service", "-> /lib/systemd/system/nginx.service", "a package's enablement symlink"},
	} {
		want := c.want
		if got, _, _, _ := state(t, vm.StateDir, c.path); got != want {
			t.Errorf("%s = %q, want %q (%s)", c.path, got, want, c.why)
		}
	}
	if _, mode, _, _ := state(t, vm.StateDir, "etc/mode.conf"); mode != 0o600 {
		t.Errorf("etc/mode.conf has mode %#o, want the image's new 0600", mode)
	}
	if _, mode, uid, gid := state(t, vm.StateDir, "etc/nginx/secret"); mode != 0o4750 || uid != 33 || gid != 33 {
		t.Errorf("etc/nginx/secret is %#o %d:%d, want the image's 04750 33:33", mode, uid, gid)
	}
	slices.Sort(kept)
	want := []string{"/etc/mine-gone.conf (the image removed it; the VM changed it)", "/etc/mine.conf"}
	if !slices.Equal(kept, want) {
		t.Errorf("kept %q, want %q", kept, want)
	}
	if kept, err := Merge(vm, image, "img"); err != nil || kept != nil {
		t.Errorf("merging the same image again: %q, %v; want nothing", kept, err)
	}
}

// TestMergeWithoutBase: a VM seeded before the base was recorded (or whose
// record is unreadable) gets what it lacks of its image, and keeps all it
// has.
func TestMergeWithoutBase(t *testing.T) {
	for _, record := range []string{"", "{not json", `{"version":1,"image":"img","paths":{}}`} {
		vm, image := seeded(t, map[string]string{"etc/app.conf": "v1\n", "etc/same.conf": "v1\n"})
		os.Remove(filepath.Join(vm.StateDir, baseFile))
		if record != "" {
			os.WriteFile(filepath.Join(vm.StateDir, baseFile), []byte(record), 0o600)
		}
		put(t, vm.StateDir, map[string]string{"etc/app.conf": "the VM's\n", "etc/gone.conf": "", "etc/own.conf": "mine\n"})
		put(t, image, map[string]string{"etc/app.conf": "v2\n", "etc/new.conf": "new\n"})
		kept, err := Merge(vm, image, "img.2")
		if err != nil {
			t.Fatal(err)
		}
		for p, want := range map[string]string{"etc/app.conf": "the VM's\n", "etc/new.conf": "new\n", "etc/same.conf": "v1\n", "etc/own.conf": "mine\n"} {
			if got, _, _, _ := state(t, vm.StateDir, p); got != want {
				t.Errorf("record %q: %s = %q, want %q", record, p, got, want)
			}
		}
		if !slices.Equal(kept, []string{"/etc/app.conf"}) {
			t.Errorf("record %q: kept %q, want /etc/app.conf", record, kept)
		}
		// Now recorded: the next version is a three-way merge again.
		put(t, image, map[string]string{"etc/same.conf": "v3\n"})
		if _, err := Merge(vm, image, "img.3"); err != nil {
			t.Fatal(err)
		}
		if got, _, _, _ := state(t, vm.StateDir, "etc/same.conf"); got != "v3\n" {
			t.Errorf("record %q: after the base was recorded, same.conf = %q, want v3", record, got)
		}
	}
}

// opens watches paths with inotify and returns a function that says which
// of them were opened since (or read: a FIFO's or a device's driver would
// have seen an open).
func opens(t *testing.T, paths ...string) func() []string {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	byWatch := map[int32]string{}
	for _, p := range paths {
		w, err := unix.InotifyAddWatch(fd, p, unix.IN_OPEN|unix.IN_ACCESS|unix.IN_MODIFY|unix.IN_DONT_FOLLOW)
		if err != nil {
			t.Fatalf("watching %s: %v", p, err)
		}
		byWatch[int32(w)] = p
	}
	return func() []string {
		var out []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				return out
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if p := byWatch[ev.Wd]; !slices.Contains(out, p) {
					out = append(out, p)
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// TestMergeHostile: what the guest put in the merge's way is not
// followed, opened or written through; the entry is skipped with a
// report, and the rest of the merge goes on.
func TestMergeHostile(t *testing.T) {
	vm, image := seeded(t, map[string]string{
		"etc/fifo.conf":   "v1\n",
		"etc/dev.conf":    "v1\n",
		"etc/big.conf":    "v1\n",
		"etc/linked.conf": "v1\n",
		"var/secret":      "the VM's secret\n",
	})
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "nginx.conf"), []byte("the host's\n"), 0o644)
	put(t, vm.StateDir, map[string]string{
		"etc/nginx":       "-> " + outside,
		"etc/fifo.conf":   "",
		"etc/dev.conf":    "",
		"etc/linked.conf": "",
	})
	if err := syscall.Mkfifo(filepath.Join(vm.EtcDir, "fifo.conf"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /dev/null's numbers: a device any driver would answer.
	if err := unix.Mknod(filepath.Join(vm.EtcDir, "dev.conf"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	// A sparse file of 4 GiB: hashed, it would take seconds, or minutes of
	// a real disk.
	if err := os.Truncate(filepath.Join(vm.EtcDir, "big.conf"), 4<<30); err != nil {
		t.Fatal(err)
	}
	// A hard link to another file of the VM, where the image updates.
	if err := os.Link(filepath.Join(vm.VarDir, "secret"), filepath.Join(vm.EtcDir, "linked.conf")); err != nil {
		t.Fatal(err)
	}
	opened := opens(t, filepath.Join(vm.EtcDir, "fifo.conf"), filepath.Join(vm.EtcDir, "dev.conf"), filepath.Join(vm.EtcDir, "big.conf"), filepath.Join(outside, "nginx.conf"), outside)
	put(t, image, map[string]string{
		"etc/nginx/nginx.conf": "new\n",
		"etc/nginx/mime.types": "new\n",
		"etc/fifo.conf":        "v2\n",
		"etc/dev.conf":         "v2\n",
		"etc/big.conf":         "v2\n",
		"etc/linked.conf":      "v2\n",
		"etc/fine.conf":        "new\n",
	})
	done := make(chan struct{})
	var kept []string
	var err error
	go func() { kept, err = Merge(vm, image, "img.2"); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the merge is still running after 2 minutes: it waits on the guest's FIFO, or reads its sparse file")
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := opened(); len(got) > 0 {
		t.Errorf("the merge opened %q", got)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 || read(t, filepath.Join(outside, "nginx.conf")) != "the host's\n" {
		t.Errorf("the merge wrote through the guest's symlink: %v", entries)
	}
	for p, want := range map[string]string{
		"etc/fifo.conf":   "?",
		"etc/dev.conf":    "?",
		"etc/linked.conf": "the VM's secret\n", // changed by the VM (to its secret's content): kept
		"var/secret":      "the VM's secret\n",
		"etc/fine.conf":   "new\n",
	} {
		if got, _, _, _ := state(t, vm.StateDir, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	slices.Sort(kept)
	want := []string{"/etc/big.conf", "/etc/dev.conf", "/etc/fifo.conf", "/etc/linked.conf", "/etc/nginx"}
	if !slices.Equal(kept, want) {
		t.Errorf("kept %q, want %q (the symlinked directory once, not what it holds)", kept, want)
	}
}

// TestMergeHardLink: where the VM has the base's version as a hard link
// to another of its files, the merge replaces the name; the other file is
// not written.
func TestMergeHardLink(t *testing.T) {
	vm, image := seeded(t, map[string]string{"etc/app.conf": "v1\n"})
	// The guest links its own file, with the base's content, there.
	os.WriteFile(filepath.Join(vm.VarDir, "other"), []byte("v1\n"), 0o644)
	os.Remove(filepath.Join(vm.EtcDir, "app.conf"))
	if err := os.Link(filepath.Join(vm.VarDir, "other"), filepath.Join(vm.EtcDir, "app.conf")); err != nil {
		t.Fatal(err)
	}
	put(t, image, map[string]string{"etc/app.conf": "v2\n"})
	if _, err := Merge(vm, image, "img.2"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(vm.EtcDir, "app.conf")); got != "v2\n" {
		t.Errorf("app.conf = %q, want v2", got)
	}
	if got := read(t, filepath.Join(vm.VarDir, "other")); got != "v1\n" {
		t.Errorf("the file hard-linked to it = %q: the merge wrote through the link", got)
	}
}

// TestMergeTreeIsSymlink: a VM whose etc the guest... cannot replace (it
// is a mount point in the guest), but whose state a bad restore left with
// etc a symlink: the merge fails, and writes nothing anywhere.
func TestMergeTreeIsSymlink(t *testing.T) {
	vm, image := seeded(t, nil)
	outside := t.TempDir()
	os.Rename(vm.EtcDir, filepath.Join(t.TempDir(), "etc"))
	os.Symlink(outside, vm.EtcDir)
	put(t, image, map[string]string{"etc/new.conf": "new\n"})
	if _, err := Merge(vm, image, "img.2"); err == nil {
		t.Error("Merge into a symlinked etc: no error")
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("written outside: %v", entries)
	}
}

// TestEtcDiff: info's view of /etc against the image, without the files
// the program writes, bounded.
func TestEtcDiff(t *testing.T) {
	vm, _ := seeded(t, map[string]string{"etc/a.conf": "v1\n", "etc/b.conf": "v1\n", "etc/c.conf": "v1\n"})
	if _, ok, err := EtcDiff(testVM(t)); ok || err != nil {
		t.Errorf("EtcDiff of a VM never started: ok %v, %v; want neither", ok, err)
	}
	if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err != nil {
		t.Fatal(err)
	}
	c, ok, err := EtcDiff(vm)
	if err != nil || !ok || c.Len() != 0 {
		t.Fatalf("EtcDiff after WriteManaged = %+v, %v, %v; want nothing: the program's own files are left out", c, ok, err)
	}
	put(t, vm.StateDir, map[string]string{"etc/a.conf": "the VM's\n", "etc/b.conf": "", "etc/new/d.conf": "x"})
	os.Chmod(filepath.Join(vm.EtcDir, "c.conf"), 0o600)
	c, _, err = EtcDiff(vm)
	want := EtcChanges{Changed: []string{"/etc/a.conf", "/etc/c.conf"}, Added: []string{"/etc/new", "/etc/new/d.conf"}, Removed: []string{"/etc/b.conf"}}
	if err != nil || !slices.Equal(c.Changed, want.Changed) || !slices.Equal(c.Added, want.Added) || !slices.Equal(c.Removed, want.Removed) {
		t.Errorf("EtcDiff = %+v, %v; want %+v", c, err, want)
	}
	// A guest that deepens /etc: what is below maxEtcDepth is not looked
	// at, not a walk without end.
	deep, rel := vm.EtcDir, "/etc"
	for range maxEtcDepth + 5 {
		deep, rel = filepath.Join(deep, "d"), rel+"/d"
	}
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	c, _, err = EtcDiff(vm)
	if err != nil {
		t.Fatalf("EtcDiff of a deep /etc: %v", err)
	}
	if got, want := len(c.Added), 2+maxEtcDepth; got != want {
		t.Errorf("EtcDiff of a deep /etc: %d added, want %d (the two before and %d levels)", got, want, maxEtcDepth)
	}
	// A guest that fills /etc: an error, not a walk without end.
	for i := range maxEtcWalk {
		if i%1000 == 0 {
			deep = filepath.Join(vm.EtcDir, "wide", strconv.Itoa(i))
			if err := os.MkdirAll(deep, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(deep, strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := EtcDiff(vm); err == nil || !strings.Contains(err.Error(), "entries in /etc") {
		t.Errorf("EtcDiff of a full /etc: %v, want too many entries", err)
	}
}
