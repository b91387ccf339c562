package config

import "path/filepath"

// setPaths derives where vm keeps its state and runtime files.
func (vm *VM) setPaths(h Host) {
	vm.StateDir = filepath.Join(h.StateDir, vm.Name)
	vm.EtcDir = filepath.Join(vm.StateDir, "etc")
	vm.VarDir = filepath.Join(vm.StateDir, "var")
	vm.RunDir = filepath.Join(h.RunDir, vm.Name)
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
