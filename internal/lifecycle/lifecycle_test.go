package lifecycle

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/simple-microvm-infra/microvm/examples"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// fakeManager is a supervise.Manager whose supervisors are active by
// name: the unit test beside the real ones (cli's TestHostApply,
// test/lifecycle), which start real keepers and units.
type fakeManager map[string]bool

func (f fakeManager) Kind() supervise.Kind                { return supervise.KindDetached }
func (f fakeManager) Start(vm *config.VM) error           { f[vm.Name] = true; return nil }
func (f fakeManager) Stop(vm *config.VM) error            { f[vm.Name] = false; return nil }
func (f fakeManager) Active(vm *config.VM) bool           { return f[vm.Name] }
func (f fakeManager) Enable(vm *config.VM, on bool) error { return nil }

// example is the shipped example with its directories in the test's own.
func example(t *testing.T) *config.Infra {
	t.Helper()
	in, err := config.Parse("infra.toml", examples.InfraTOML)
	if err != nil {
		t.Fatal(err)
	}
	in.Relocate(filepath.Join(t.TempDir(), "state"), filepath.Join(t.TempDir(), "run"))
	return in
}

// TestDeparted: a VM gone from the file is one to stop when its run
// directory holds a record or its supervisor is active; directories that
// are not VMs, the file's own VMs and empty leftovers are not.
func TestDeparted(t *testing.T) {
	testenv.NeedRoot(t) // records count only in directories root owns
	in := example(t)
	m := fakeManager{"active": true}
	dirs := map[string]string{ // run directory: the record in it, if any
		"vm1":      "keeper.pid",   // in the file
		"old":      "started.json", // gone, with a record
		"older":    "keeper.pid",   // gone, with a keeper's pid
		"active":   "",             // gone, its supervisor active
		"empty":    "",             // gone, nothing left
		"images":   "keeper.pid",   // not a VM
		"Not_A_VM": "keeper.pid",   // not a name the file accepts
	}
	for d, rec := range dirs {
		dir := filepath.Join(in.Host.RunDir, d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if rec != "" {
			if err := os.WriteFile(filepath.Join(dir, rec), []byte("1 1\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	gone, err := Departed(in, m)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, vm := range gone {
		got = append(got, vm.Name)
		if want := in.Host.Departed(vm.Name); vm.RunDir != want.RunDir || vm.StateDir != want.StateDir {
			t.Errorf("%s: paths %s, %s; want config's %s, %s", vm.Name, vm.RunDir, vm.StateDir, want.RunDir, want.StateDir)
		}
	}
	if want := []string{"active", "old", "older"}; !slices.Equal(got, want) {
		t.Errorf("departed %v, want %v", got, want)
	}
}

// TestStateOf: without a started record a VM is starting while its
// supervisor is active and stopped otherwise; InState keeps by state.
func TestStateOf(t *testing.T) {
	in := example(t)
	m := fakeManager{"vm2": true}
	var vms []*config.VM
	for i := range in.VMs {
		vms = append(vms, &in.VMs[i])
	}
	for _, tc := range []struct {
		vm   string
		want State
	}{
		{"vm1", Stopped},
		{"vm2", Starting},
	} {
		vm, _ := in.VM(tc.vm)
		if got := StateOf(m, vm).State; got != tc.want {
			t.Errorf("%s: state %s, want %s", tc.vm, got, tc.want)
		}
	}
	names := func(vms []*config.VM) []string {
		var out []string
		for _, vm := range vms {
			out = append(out, vm.Name)
		}
		return out
	}
	if got, want := names(InState(m, vms, Running, Starting)), []string{"vm2"}; !slices.Equal(got, want) {
		t.Errorf("running or starting: %v, want %v", got, want)
	}
	if got, want := names(InState(m, vms, Stopped)), []string{"vm1", "vm3", "vm4"}; !slices.Equal(got, want) {
		t.Errorf("stopped: %v, want %v", got, want)
	}
}
