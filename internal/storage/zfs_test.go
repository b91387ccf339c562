package storage

// Tests against real ZFS: zfs-fuse with a pool in a file (package zfstest).

import (
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
)

// zfsModel is a model with storage = "zfs" in pool, state_dir under dir.
func zfsModel(t *testing.T, pool *zfstest.Pool, extra string, vms ...string) *config.Infra {
	t.Helper()
	host := "storage = \"zfs\"\nzfs_dataset = \"" + pool.Name + "/microvms\"\n" + extra
	return model(t, filepath.Join(pool.Dir, "state"), host, vms...)
}

// zfsGet reads one property of a dataset with the zfs command.
func zfsGet(t *testing.T, prop, ds string) string {
	t.Helper()
	out, err := exec.Command("zfs", "get", "-H", "-o", "value", prop, ds).CombinedOutput()
	if err != nil {
		t.Fatalf("zfs get %s %s: %s", prop, ds, out)
	}
	return strings.TrimSpace(string(out))
}

func strs(acts []action.Action) []string {
	out := []string{}
	for _, a := range acts {
		out = append(out, a.String())
	}
	return out
}

// apply plans in and applies the plan, and returns what it applied.
func apply(t *testing.T, in *config.Infra) []string {
	t.Helper()
	acts, _, err := setupOf(For(in.Host).Diff(in))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acts {
		if err := a.Apply(); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	return strs(acts)
}

// TestZFSDatasets: apply creates the parent at state_dir with compression,
// the images dataset and one per VM, mounted where the dir backend keeps
// the same files; a second plan has nothing to do; applying the same
// actions again succeeds; a VM removed from the file keeps its dataset.
func TestZFSDatasets(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "", "vm1", "vm2")
	state, parent := in.Host.StateDir, pool.Name+"/microvms"

	acts, _, err := setupOf(For(in.Host).Diff(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"zfs create -o mountpoint=" + state + " -o compression=on " + parent,
		"zfs create " + parent + "/images",
		"zfs create -o setuid=off -o devices=off -o refquota=20G " + parent + "/vm1",
		"zfs create -o setuid=off -o devices=off -o refquota=20G " + parent + "/vm2",
	}
	if got := strs(acts); !reflect.DeepEqual(got, want) {
		t.Fatalf("first plan:\ngot  %q\nwant %q", got, want)
	}
	for _, a := range acts {
		if err := a.Apply(); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}

	vm1, _ := in.VM("vm1")
	checks := []struct{ prop, ds, want string }{
		{"mountpoint", parent, state},
		{"compression", parent, "on"},
		{"mountpoint", parent + "/vm1", vm1.StateDir},
		{"compression", parent + "/vm1", "on"},
		{"mounted", parent + "/vm1", "yes"},
		{"setuid", parent + "/vm1", "off"},
		{"devices", parent + "/vm1", "off"},
		{"refquota", parent + "/vm1", "20G"},
		{"mountpoint", parent + "/images", in.Host.ImagesDir()},
		{"mounted", parent + "/images", "yes"},
	}
	for _, c := range checks {
		if got := zfsGet(t, c.prop, c.ds); got != c.want {
			t.Errorf("%s of %s: got %q, want %q", c.prop, c.ds, got, c.want)
		}
	}
	// What the guest writes lands in the VM's dataset.
	if err := os.MkdirAll(vm1.VarDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := isMountPoint(t, vm1.StateDir); !got {
		t.Errorf("%s is not a mount point", vm1.StateDir)
	}

	again, warnings, err := setupOf(For(in.Host).Diff(in))
	if err != nil || len(again) != 0 || len(warnings) != 0 {
		t.Errorf("second plan: got %q, warnings %q, error %v; want no changes", strs(again), warnings, err)
	}
	for _, a := range acts {
		if err := a.Apply(); err != nil {
			t.Errorf("applying %q again: %v", a, err)
		}
	}

	// A VM dataset made without the two properties (by an older
	// version) gets them.
	if _, err := run("zfs", "set", "setuid=on", parent+"/vm2"); err != nil {
		t.Fatal(err)
	}
	acts, _, err = setupOf(For(in.Host).Diff(in))
	if want := []string{"zfs set setuid=off " + parent + "/vm2", "zfs set devices=off " + parent + "/vm2"}; err != nil || !reflect.DeepEqual(strs(acts), want) {
		t.Errorf("plan after setuid=on: got %q, %v; want %q", strs(acts), err, want)
	}
	for _, a := range acts {
		if err := a.Apply(); err != nil {
			t.Fatal(err)
		}
	}

	less := zfsModel(t, pool, "", "vm2")
	acts, warnings, err = setupOf(For(less.Host).Diff(less))
	wantWarn := []string{"dataset " + parent + "/vm1 (" + vm1.StateDir + ") is not a VM of infra.toml; its data is kept (zfs destroy -r " + parent + "/vm1 deletes it)"}
	if err != nil || len(acts) != 0 || !reflect.DeepEqual(warnings, wantWarn) {
		t.Errorf("vm1 removed: got %q, warnings %q, error %v; want no changes and %q", strs(acts), warnings, err, wantWarn)
	}
}

func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	a, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	return devOf(a) != devOf(b)
}

// TestZFSNestedDataset: a parent deeper in the pool is made with -p.
func TestZFSNestedDataset(t *testing.T) {
	pool := zfstest.New(t)
	in := model(t, filepath.Join(pool.Dir, "state"), "storage = \"zfs\"\nzfs_dataset = \""+pool.Name+"/infra/microvms\"", "vm1")
	got := apply(t, in)
	if want := "zfs create -p -o mountpoint=" + in.Host.StateDir + " -o compression=on " + pool.Name + "/infra/microvms"; got[0] != want {
		t.Errorf("got %q, want %q", got[0], want)
	}
	if got := zfsGet(t, "mounted", pool.Name+"/infra/microvms/vm1"); got != "yes" {
		t.Errorf("vm1 mounted = %q", got)
	}
}

// TestZFSRefuses: plan explains, and creates nothing, when the pool is
// missing, when files are where a dataset would be mounted, and when the
// parent dataset is mounted elsewhere.
func TestZFSRefuses(t *testing.T) {
	pool := zfstest.New(t)
	tests := []struct {
		name   string
		setup  func(in *config.Infra)
		host   string
		want   []string
		absent []string
	}{
		{
			name: "no pool",
			host: "storage = \"zfs\"\nzfs_dataset = \"" + pool.Name + "x/microvms\"",
			want: []string{
				"infra.toml:5:1: [host] storage = \"zfs\", but the pool " + pool.Name + "x is not available (cannot open '" + pool.Name + "x': no such pool)",
				"zpool create -f " + pool.Name + "x /dev/sdX",
			},
			absent: []string{"apt install"}, // the tools are there
		},
		{
			name: "files in state_dir",
			setup: func(in *config.Infra) {
				os.MkdirAll(filepath.Join(in.Host.StateDir, "vm1", "var"), 0o755)
			},
			want: []string{"already holds files", "mv " + filepath.Join(pool.Dir, "state") + " "},
		},
		{
			name: "files in a VM's directory",
			setup: func(in *config.Infra) {
				create := &CreateDataset{Name: in.Host.ZFSDataset, Props: []string{"mountpoint=" + in.Host.StateDir}}
				if err := create.Apply(); err != nil {
					t.Fatal(err)
				}
				vm, _ := in.VM("vm1")
				os.MkdirAll(vm.VarDir, 0o755)
			},
			want: []string{filepath.Join(pool.Dir, "state", "vm1") + " already holds files", "cp -a "},
		},
		{
			name: "parent mounted elsewhere",
			setup: func(in *config.Infra) {
				create := &CreateDataset{Name: in.Host.ZFSDataset, Props: []string{"mountpoint=" + filepath.Join(pool.Dir, "elsewhere")}}
				if err := create.Apply(); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"is mounted at " + filepath.Join(pool.Dir, "elsewhere"), "zfs set mountpoint="},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := tt.host
			if host == "" {
				host = "storage = \"zfs\"\nzfs_dataset = \"" + pool.Name + "/case" + string(rune('0'+i)) + "\""
			}
			in := model(t, filepath.Join(pool.Dir, "state"), host, "vm1")
			os.RemoveAll(in.Host.StateDir)
			if tt.setup != nil {
				tt.setup(in)
			}
			before := datasetNames(t, pool.Name)
			acts, _, err := setupOf(For(in.Host).Diff(in))
			if err == nil {
				t.Fatalf("got plan %q, want an error", strs(acts))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(err.Error(), a) {
					t.Errorf("error has %q:\n%v", a, err)
				}
			}
			if after := datasetNames(t, pool.Name); !reflect.DeepEqual(after, before) {
				t.Errorf("datasets changed: %q, then %q", before, after)
			}
			exec.Command("zfs", "destroy", "-r", in.Host.ZFSDataset).Run()
		})
	}
}

func datasetNames(t *testing.T, pool string) []string {
	t.Helper()
	out, err := exec.Command("zfs", "list", "-H", "-o", "name", "-r", pool).Output()
	if err != nil {
		t.Fatal(err)
	}
	return lines(string(out))
}

// TestZFSSnapshotRollback: a snapshot is listed; rolling back to it
// restores a file the VM changed and removes one it made, and destroys
// the snapshots taken after it.
func TestZFSSnapshotRollback(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "", "vm1")
	apply(t, in)
	vm, _ := in.VM("vm1")
	b := For(in.Host)
	file := filepath.Join(vm.VarDir, "lib", "app", "state")
	newFile := filepath.Join(vm.VarDir, "new")
	write := func(path, body string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	write(file, "before")
	start := time.Now().Add(-time.Second)
	if err := b.Snapshot(vm, "good"); err != nil {
		t.Fatal(err)
	}
	write(file, "after, a longer text")
	write(newFile, "x")
	if err := b.Snapshot(vm, "bad"); err != nil {
		t.Fatal(err)
	}
	if err := b.Snapshot(vm, "good"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second snapshot called good: got %v, want an error that it exists", err)
	}

	snaps, err := b.Snapshots(vm)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(snaps), []string{"good", "bad"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshots: got %v, want %v", got, want)
	}
	if c := snaps[0].Created; c.Before(start) || c.After(time.Now().Add(time.Second)) {
		t.Errorf("created %v, want about now", c)
	}
	if snaps[0].Auto {
		t.Errorf("a person's snapshot is marked automatic")
	}

	if err := b.Rollback(vm, "good"); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(file); err != nil || string(got) != "before" {
		t.Errorf("after rollback the file reads %q, %v; want %q", got, err, "before")
	}
	if _, err := os.Stat(newFile); !os.IsNotExist(err) {
		t.Errorf("after rollback %s: %v, want it gone", newFile, err)
	}
	snaps, err = b.Snapshots(vm)
	if got, want := names(snaps), []string{"good"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("snapshots after rollback: got %v, %v; want %v", got, err, want)
	}

	if err := b.Rollback(vm, "nope"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("rollback to a missing snapshot: got %v", err)
	}
	if err := b.Snapshot(vm, "a@b"); err == nil {
		t.Errorf("snapshot called a@b: no error")
	}
}

// TestZFSSnapshotBeforeChange: each change takes an automatic snapshot,
// the automatic ones are pruned to keep_snapshots, newest kept, and a
// person's snapshot is never pruned. Several within a second get numbers.
func TestZFSSnapshotBeforeChange(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "keep_snapshots = 2", "vm1")
	apply(t, in)
	vm, _ := in.VM("vm1")
	b := For(in.Host)

	defer func(f func() time.Time) { now = f }(now)
	at := time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)
	now = func() time.Time { return at }

	var taken []string
	take := func(reason string) {
		t.Helper()
		name, err := SnapshotBeforeChange(in.Host, vm, reason)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, name)
	}
	take("update")
	if err := b.Snapshot(vm, "mine"); err != nil {
		t.Fatal(err)
	}
	take("update")
	take("apply")
	at = at.Add(time.Minute)
	take("update")

	wantTaken := []string{"auto-20260801-120000-update", "auto-20260801-120000-update-2", "auto-20260801-120000-apply", "auto-20260801-120100-update"}
	if !reflect.DeepEqual(taken, wantTaken) {
		t.Errorf("taken: got %v, want %v", taken, wantTaken)
	}
	snaps, err := b.Snapshots(vm)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(snaps), []string{"mine", "auto-20260801-120000-apply", "auto-20260801-120100-update"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after pruning: got %v, want %v", got, want)
	}

	none := zfsModel(t, pool, "keep_snapshots = 0", "vm1")
	if name, err := SnapshotBeforeChange(none.Host, vm, "update"); name != "" || err != nil {
		t.Errorf("keep_snapshots = 0: got %q, %v; want no snapshot", name, err)
	}
	gone, err := Prune(b, vm, 0)
	if err != nil || len(gone) != 2 {
		t.Errorf("Prune to 0: destroyed %v, %v; want the 2 automatic ones", gone, err)
	}
	snaps, _ = b.Snapshots(vm)
	if got, want := names(snaps), []string{"mine"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after Prune to 0: got %v, want %v", got, want)
	}
}

// TestZFSUsage: each VM's figure is its own dataset's, the images' theirs,
// and the total holds them all.
func TestZFSUsage(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "", "vm1", "vm2")
	apply(t, in)
	vm1, _ := in.VM("vm1")
	// Random bytes, which compression cannot shrink.
	data := make([]byte, 4<<20)
	rand.Read(data)
	os.MkdirAll(vm1.VarDir, 0o755)
	if err := os.WriteFile(filepath.Join(vm1.VarDir, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	b := For(in.Host)
	// ZFS counts a write when its transaction group is committed: within
	// 5 s on Linux, 30 s with zfs-fuse. A snapshot commits at once.
	if err := b.Snapshot(vm1, "measured"); err != nil {
		t.Fatal(err)
	}
	u, err := b.Usage(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.VMs["vm1"]; got < 4<<20 || got > 5<<20 {
		t.Errorf("vm1 uses %d bytes, want about 4 MiB", got)
	}
	if got := u.VMs["vm2"]; got <= 0 || got > 1<<20 {
		t.Errorf("vm2 uses %d bytes, want a little", got)
	}
	if u.Images <= 0 || u.Images > 1<<20 {
		t.Errorf("images use %d bytes, want a little", u.Images)
	}
	if u.Total < u.VMs["vm1"]+u.VMs["vm2"]+u.Images {
		t.Errorf("total %d < vm1 %d + vm2 %d + images %d", u.Total, u.VMs["vm1"], u.VMs["vm2"], u.Images)
	}
}

// TestZFSMissingDataset: a VM whose dataset apply has not made yet gets
// an error that says to apply.
func TestZFSMissingDataset(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "", "vm1")
	vm, _ := in.VM("vm1")
	_, err := For(in.Host).Snapshots(vm)
	if err == nil || !strings.Contains(err.Error(), "does not exist (microvm apply --host-only creates the datasets)") {
		t.Errorf("got %v, want an error saying to apply", err)
	}
}

func devOf(fi os.FileInfo) uint64 { return uint64(fi.Sys().(*syscall.Stat_t).Dev) }

// TestZFSImage: an image is staged in a dataset of its own, which is
// read-only once in place; plan mounts it again after an unmount; a
// discarded build and a removed image leave no dataset behind; a
// leftover staging dataset is explained.
func TestZFSImage(t *testing.T) {
	pool := zfstest.New(t)
	in := zfsModel(t, pool, "", "vm1")
	apply(t, in)
	h := in.Host
	b := For(h)
	ds, stagingDS := pool.Name+"/microvms/images/debian", pool.Name+"/microvms/images/debian.new"

	staging := filepath.Join(h.ImagesDir(), ".debian.new-1", "images", "debian")
	if err := b.StageImage("debian", staging); err != nil {
		t.Fatal(err)
	}
	if got := zfsGet(t, "mountpoint", stagingDS); got != staging {
		t.Errorf("staging dataset mounted at %s, want %s", got, staging)
	}
	if err := os.WriteFile(filepath.Join(staging, "vmlinuz"), []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := b.StageImage("debian", staging)
	if want := "dataset " + stagingDS + " exists: another build of image debian is running, or one was killed; if none is running, remove it with: zfs destroy -r " + stagingDS; err == nil || err.Error() != want {
		t.Errorf("staging twice: got %v, want %q", err, want)
	}
	if err := b.CommitImage("debian", staging); err != nil {
		t.Fatal(err)
	}
	if got := zfsGet(t, "mountpoint", ds); got != h.ImageDir("debian") {
		t.Errorf("image dataset mounted at %s, want %s", got, h.ImageDir("debian"))
	}
	if got, err := os.ReadFile(h.ImageKernel("debian")); string(got) != "kernel" {
		t.Errorf("the image's kernel: %q, %v", got, err)
	}
	err = os.WriteFile(filepath.Join(h.ImageDir("debian"), "new"), nil, 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the image: got %v, want EROFS", err)
	}

	// After a reboot without ZFS mounts, plan mounts the image too.
	if out, err := exec.Command("zfs", "unmount", ds).CombinedOutput(); err != nil {
		t.Fatalf("zfs unmount: %s", out)
	}
	if got, want := apply(t, in), []string{"zfs mount " + ds}; !reflect.DeepEqual(got, want) {
		t.Errorf("plan after an unmount: got %q, want %q", got, want)
	}
	if got := zfsGet(t, "mounted", ds); got != "yes" {
		t.Errorf("mounted = %s after apply", got)
	}

	// A failed build: discarding deletes its dataset; twice is harmless.
	other := filepath.Join(h.ImagesDir(), ".other.new-1", "images", "other")
	if err := b.StageImage("other", other); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.DiscardImage("other", other); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.RemoveImage("debian"); err != nil {
		t.Fatal(err)
	}
	if got, want := datasetNames(t, pool.Name), []string{pool.Name, pool.Name + "/microvms", pool.Name + "/microvms/images", pool.Name + "/microvms/vm1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("datasets left: %q, want %q", got, want)
	}
	if _, err := os.Stat(h.ImageDir("debian")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after RemoveImage, %s: %v", h.ImageDir("debian"), err)
	}
}
