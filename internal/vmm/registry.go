package vmm

import (
	"maps"
	"slices"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Hypervisor is one VMM the program drives: how to make its backend, and
// what it needs and can do. Each backend package registers its own (see
// Register), so adding a VMM is a new package beside qemu and
// cloudhypervisor, an import of it in package runner (hypervisors.go), and
// its name and control socket in config (controlSockets, which
// TestRegistryMatchesConfig keeps equal to the registry). What it cannot
// do is a problem in the file (Check).
type Hypervisor struct {
	Name     config.Hypervisor // as infra.toml writes it: hypervisor = "qemu"
	Title    string            // as people write it: "QEMU"
	Program  string            // the executable, looked up in PATH
	NeedsKVM bool              // it cannot emulate a CPU: accel = "tcg" is not for it
	Console  Console
	// Socket is the name of its control socket in the VM's vmm directory
	// (config.VM.ControlSocket derives the path).
	Socket string
	// Virtiofs says it can give the guest vhost-user-fs shares, which
	// every VM boots from (its image, /etc and /var).
	Virtiofs bool
	// New returns its backend, for the host's accelerator ("kvm" or
	// "tcg").
	New func(accel config.Accel) Backend
}

// Console is what a hypervisor makes of the guest's serial console.
type Console int

const (
	// ConsoleLog is a log file only: `microvm console` follows it,
	// read-only.
	ConsoleLog Console = iota
	// ConsoleSocket is the log and a socket one can attach to, to type.
	ConsoleSocket
)

var registry = map[config.Hypervisor]Hypervisor{}

// Register adds h to the hypervisors the program knows, from the init of
// its backend's package. A name registered twice is a bug, and panics.
func Register(h Hypervisor) {
	if _, ok := registry[h.Name]; ok {
		panic("vmm: hypervisor " + string(h.Name) + " registered twice")
	}
	registry[h.Name] = h
}

// Lookup returns the hypervisor called name.
func Lookup(name config.Hypervisor) (Hypervisor, bool) {
	h, ok := registry[name]
	return h, ok
}

// Names are the names of the registered hypervisors, sorted.
func Names() []config.Hypervisor {
	return slices.Sorted(maps.Keys(registry))
}

// For returns the hypervisor vm runs under, or an error saying what to
// write instead: its name has no backend in this build, or the backend
// lacks what every VM needs.
func For(in *config.Infra, vm *config.VM) (Hypervisor, error) {
	h, problem := check(in, vm)
	if problem != nil {
		return h, problem
	}
	return h, nil
}

// Check reports each VM of in that no registered hypervisor can run
// (For), as config.Parse reports the file's problems: every command that
// reads the file says so.
func Check(in *config.Infra) error {
	var errs config.ErrorList
	for i := range in.VMs {
		if _, problem := check(in, &in.VMs[i]); problem != nil {
			errs = append(errs, problem)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

func check(in *config.Infra, vm *config.VM) (Hypervisor, *config.Error) {
	at := []string{"vm." + vm.Name + ".hypervisor", "defaults.hypervisor", "vm." + vm.Name}
	h, ok := Lookup(vm.Hypervisor)
	if !ok {
		return h, in.Errorf(at, "vm.%s: hypervisor %q has no backend in this program; use one of %q", vm.Name, vm.Hypervisor, Names())
	}
	if !h.Virtiofs {
		can := slices.DeleteFunc(Names(), func(n config.Hypervisor) bool { return !registry[n].Virtiofs })
		return h, in.Errorf(at, "vm.%s: hypervisor %q cannot give the guest virtiofs shares, which every VM boots from; use one of %q", vm.Name, vm.Hypervisor, can)
	}
	return h, nil
}
