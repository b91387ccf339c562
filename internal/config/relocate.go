package config

import "path/filepath"

// setPaths derives where vm keeps its state and runtime files.
func (vm *VM) setPaths(h Host) {
	vm.StateDir = filepath.Join(h.StateDir, vm.Name)
	vm.EtcDir = filepath.Join(vm.StateDir, "etc")
	vm.VarDir = filepath.Join(vm.StateDir, "var")
	vm.RunDir = filepath.Join(h.RunDir, vm.Name)
}

// Departed returns what the program keeps of a VM called name that is
// not (or no longer) in the file: its name, user and paths, without a
// network. For apply, which stops such VMs, and destroy, which deletes
// their data.
func (h Host) Departed(name string) *VM {
	vm := &VM{Name: name, User: h.VMUser(name)}
	vm.setPaths(h)
	return vm
}

// VMUser is the user the VMM of the VM called name runs as, with a group
// of the same name: USER-NAME.
func (h Host) VMUser(name string) string { return h.User + "-" + name }

// IsVMName reports whether name can name a VM: what [vm.NAME] accepts.
func IsVMName(name string) bool {
	return isName(name) && len(name) <= MaxNameLen && ReservedNames[name] == ""
}

// Relocate moves the model's state and run directories, re-deriving every
// VM's paths. The demo uses it to run the example file without touching a
// host's real VM data.
func (in *Infra) Relocate(stateDir, runDir string) {
	in.Host.StateDir, in.Host.RunDir = stateDir, runDir
	for i := range in.VMs {
		in.VMs[i].setPaths(in.Host)
	}
}
