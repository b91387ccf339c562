package storage

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
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
