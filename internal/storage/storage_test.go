package storage

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// model parses an infra.toml whose [host] has the given extra lines.
func model(t *testing.T, stateDir, host string, vms ...string) *config.Infra {
	t.Helper()
	src := "[host]\nuplink = \"eth0\"\nstate_dir = \"" + stateDir + "\"\n" + host + "\n"
	for i, vm := range vms {
		src += "[vm." + vm + "]\nsubnet = \"10." + string(rune('1'+i)) + ".0.0/24\"\n"
	}
	in, err := config.Parse("infra.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func names(snaps []Snapshot) []string {
	out := []string{}
	for _, s := range snaps {
		out = append(out, s.Name)
	}
	return out
}

func TestToPrune(t *testing.T) {
	a := func(n string) Snapshot { return Snapshot{Name: n, Auto: true} }
	m := func(n string) Snapshot { return Snapshot{Name: n} }
	snaps := []Snapshot{a("a1"), m("mine"), a("a2"), a("a3"), m("other"), a("a4")}
	tests := []struct {
		keep int
		want []string
	}{
		{0, []string{"a1", "a2", "a3", "a4"}},
		{1, []string{"a1", "a2", "a3"}},
		{3, []string{"a1"}},
		{4, []string{}},
		{10, []string{}},
		{-1, []string{"a1", "a2", "a3", "a4"}},
	}
	for _, tt := range tests {
		if got := names(toPrune(snaps, tt.keep)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("keep %d: got %v, want %v", tt.keep, got, tt.want)
		}
	}
	if got := toPrune(nil, 2); len(got) != 0 {
		t.Errorf("no snapshots: got %v, want none", got)
	}
}

func TestLater(t *testing.T) {
	snaps := []Snapshot{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	tests := []struct {
		name string
		want []string
	}{
		{"a", []string{"b", "c"}},
		{"c", []string{}},
		{"nope", []string{}},
	}
	for _, tt := range tests {
		if got := names(Later(snaps, tt.name)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Later(%s): got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestCheckLabel(t *testing.T) {
	tests := []struct {
		label string
		ok    bool
	}{
		{"before-upgrade", true},
		{"20260801-120000", true},
		{"v1.2:rc_3", true},
		{"", false},
		{"auto-mine", false}, // would be pruned
		{"-x", false},
		{"has space", false},
		{"a@b", false},
		{"a/b", false},
		{"a%b", false},
		{strings.Repeat("x", 65), false},
	}
	for _, tt := range tests {
		if err := CheckLabel(tt.label); (err == nil) != tt.ok {
			t.Errorf("CheckLabel(%q) = %v, want ok=%v", tt.label, err, tt.ok)
		}
	}
}

func TestNames(t *testing.T) {
	at := time.Date(2026, 8, 1, 14, 3, 9, 0, time.FixedZone("CEST", 2*3600))
	tests := []struct{ got, want string }{
		{DefaultLabel(at), "20260801-120309"},
		{autoName(at, "update"), "auto-20260801-120309-update"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
		if !isLabel(tt.got) {
			t.Errorf("%q is not a valid snapshot name", tt.got)
		}
	}
}

func TestSortSnapshots(t *testing.T) {
	t0 := time.Unix(1000, 0)
	snaps := []Snapshot{{Name: "late", Created: t0.Add(time.Second)}, {Name: "x", Created: t0}, {Name: "y", Created: t0}}
	sortSnapshots(snaps)
	if got, want := names(snaps), []string{"x", "y", "late"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v (same second: zfs's order kept)", got, want)
	}
}

// TestDir: the dir backend plans nothing for VMs not started yet (where
// state_dir has no project quotas, it says their disk is not bounded), has
// no snapshots (with an error that says how to get them), and measures
// what is on disk.
func TestDir(t *testing.T) {
	state := t.TempDir()
	in := model(t, state, "", "vm1", "vm2")
	b := For(in.Host)
	acts, warnings, err := setupOf(b.Diff(in))
	if why := QuotaCheck(in.Host); why != "" {
		if want := `the VMs' disk limits (disk = "20G") cannot be enforced: ` + why; len(warnings) != 1 || warnings[0] != want {
			t.Errorf("Diff warns %q; want %q", warnings, want)
		}
		warnings = nil
	}
	if len(acts) != 0 || len(warnings) != 0 || err != nil {
		t.Errorf("Diff: got %v, %v, %v; want nothing", acts, warnings, err)
	}
	vm1, _ := in.VM("vm1")
	if err := b.Snapshot(vm1, "x"); !errors.Is(err, ErrNoSnapshots) || !strings.Contains(err.Error(), `storage = "zfs"`) {
		t.Errorf("Snapshot: got %v, want ErrNoSnapshots", err)
	}
	if name, err := SnapshotBeforeChange(in.Host, vm1, "update"); name != "" || err != nil {
		t.Errorf("SnapshotBeforeChange: got %q, %v; want none, no error", name, err)
	}

	write := func(path string, size int) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(vm1.VarDir, "data"), 1<<20)
	write(filepath.Join(in.Host.ImageRootfs("debian"), "bin", "sh"), 64<<10)
	// A hard link is counted once.
	if err := os.Link(filepath.Join(vm1.VarDir, "data"), filepath.Join(vm1.VarDir, "link")); err != nil {
		t.Fatal(err)
	}
	u, err := b.Usage(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.VMs["vm1"]; got < 1<<20 || got > 1<<20+64<<10 {
		t.Errorf("vm1 uses %d bytes, want about 1 MiB", got)
	}
	if got, ok := u.VMs["vm2"]; !ok || got != 0 {
		t.Errorf("vm2 (no directory yet) uses %d (listed %v), want 0", got, ok)
	}
	if u.Images < 64<<10 || u.Images >= 1<<20 {
		t.Errorf("images use %d bytes, want about 64 KiB", u.Images)
	}
	if u.Total < u.VMs["vm1"]+u.Images {
		t.Errorf("total %d is less than vm1 %d + images %d", u.Total, u.VMs["vm1"], u.Images)
	}
}

// TestZFSWithoutTools: on a host without the zfs command, plan says what to
// install and the design's commands, pointing at the line of infra.toml.
func TestZFSWithoutTools(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	in := model(t, t.TempDir(), "storage = \"zfs\"\nzfs_dataset = \"tank/microvms\"", "vm1")
	_, _, err := setupOf(For(in.Host).Diff(in))
	if err == nil {
		t.Fatal("Diff without zfs: no error")
	}
	for _, want := range []string{
		"infra.toml:5:1: [host] storage = \"zfs\", but this host has no zfs command.",
		"apt install zfsutils-linux",
		"zpool create -f tank /dev/sdX",
		"apply creates tank/microvms, mounted at " + in.Host.StateDir,
		`Or set storage = "dir"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%s", want, err)
		}
	}
}

// setupOf splits a storage Diff as the tests read it.
func setupOf(d action.Diff, err error) ([]action.Action, []string, error) {
	return d.Setup, d.Warnings, err
}

// TestUsageHostileTree: a guest's chain of 20,000 nested directories is
// measured with a few descriptors and memory linear in its depth (it took
// 13 GiB, then failed with "too many open files"), once: status then reads
// the record, until it is UsageMaxAge old.
func TestUsageHostileTree(t *testing.T) {
	testenv.NeedRoot(t)
	in := model(t, t.TempDir(), "", "vm1")
	vm := &in.VMs[0]
	if err := os.MkdirAll(vm.VarDir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(vm.StateDir, 0o700)
	if err := os.WriteFile(vm.Marker(), []byte("microvm VM vm1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const depth = 20000
	testenv.Chain(t, vm.VarDir, "d", depth)
	t.Cleanup(func() {
		if d, err := safedir.Open(vm.StateDir); err == nil {
			d.RemoveAll("var")
			d.Close()
		}
	})

	b := For(in.Host)
	restore := testenv.LimitFiles(t, 16)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	u, err := b.Usage(in)
	runtime.ReadMemStats(&after)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	// Each directory has at least one block.
	if got := u.VMs["vm1"]; got < depth*512 {
		t.Errorf("vm1 uses %d bytes, want at least %d", got, depth*512)
	}
	if u.Total < u.VMs["vm1"] {
		t.Errorf("total %d is less than vm1's %d", u.Total, u.VMs["vm1"])
	}
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(depth*2<<10); got > limit {
		t.Errorf("Usage allocated %d bytes in all, want under %d (2 KiB a level)", got, limit)
	}
	t.Logf("Usage: %d bytes allocated in all", after.TotalAlloc-before.TotalAlloc)

	// The guest writes 1 MiB more: status goes on with the record, and
	// does not walk the tree again; a measure asked for now sees it.
	if err := os.WriteFile(filepath.Join(vm.VarDir, "more"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := b.Usage(in)
	if err != nil {
		t.Fatal(err)
	}
	if again.VMs["vm1"] != u.VMs["vm1"] || again.Total != u.Total {
		t.Errorf("second Usage: vm1 %d, total %d; want the recorded %d, %d", again.VMs["vm1"], again.Total, u.VMs["vm1"], u.Total)
	}
	if now, err := VMUsage(vm, 0); err != nil || now < u.VMs["vm1"]+1<<20 {
		t.Errorf("VMUsage now: %d, %v; want at least %d", now, err, u.VMs["vm1"]+1<<20)
	}
}

// TestProtectAll: with plain directories, every VM's directory that is
// not on a nosuid,nodev mount gets one (what microvm host does at boot;
// a departed VM's too): a device node its guest left there does not open.
// Directories not marked as a VM's are left alone. Destroy (destroy,
// teardown --data) unmounts them again. With ZFS the datasets' properties
// do it: nothing to do.
func TestProtectAll(t *testing.T) {
	state := filepath.Join(testenv.DeviceDir(t), "state")
	in := model(t, state, "", "vm1")
	b := For(in.Host)
	vm1, departed, other := in.Host.Departed("vm1"), in.Host.Departed("gone"), filepath.Join(state, "notavm")
	for _, dir := range []string{vm1.StateDir, departed.StateDir, other} {
		if err := os.MkdirAll(filepath.Join(dir, "var"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(dir, "var", "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
			t.Fatal(err)
		}
	}
	for _, vm := range []*config.VM{vm1, departed} {
		os.WriteFile(vm.Marker(), []byte("microvm VM "+vm.Name+"\n"), 0o600)
	}
	opens := func(dir string) bool {
		f, err := os.Open(filepath.Join(dir, "var", "zero"))
		if err == nil {
			f.Close()
		}
		return err == nil
	}
	zfs := in.Host
	zfs.Storage = config.StorageZFS
	if acts, err := ProtectAll(zfs); len(acts) != 0 || err != nil {
		t.Errorf("ProtectAll with ZFS: %v, %v; want nothing", acts, err)
	}
	acts, err := ProtectAll(in.Host)

	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range acts {
		got = append(got, a.String())
		if err := a.Apply(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"mount --bind " + departed.StateDir + " " + departed.StateDir + " && mount -o remount,bind,nosuid,nodev " + departed.StateDir + "  # the guest's device nodes and setuid programs stay inert",
		"mount --bind " + vm1.StateDir + " " + vm1.StateDir + " && mount -o remount,bind,nosuid,nodev " + vm1.StateDir + "  # the guest's device nodes and setuid programs stay inert",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ProtectAll:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for dir, want := range map[string]bool{vm1.StateDir: false, departed.StateDir: false, other: true} {
		if got := opens(dir); got != want {
			t.Errorf("the device node in %s opens: %v, want %v", dir, got, want)
		}
	}
	if acts, err := ProtectAll(in.Host); len(acts) != 0 || err != nil {
		t.Errorf("ProtectAll again: %v, %v; want nothing", acts, err)
	}

	a := b.Destroy(nil)
	if a == nil {
		t.Fatal("Destroy(nil): nothing to do, want the mounts undone")
	}
	if got, want := a.String(), "umount "+departed.StateDir+" "+vm1.StateDir; got != want {
		t.Errorf("Destroy(nil) = %q, want %q", got, want)
	}
	if err := a.Apply(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Protected(vm1.StateDir); ok {
		t.Error("still protected after Destroy(nil)")
	}
	if a := b.Destroy(vm1); a != nil {
		t.Errorf("Destroy(vm1) with nothing mounted: %s", a)
	}
}
