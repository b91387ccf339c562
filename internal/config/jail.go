package config

import "path/filepath"

// JailDir is the empty directory, root's, that the VMM's jail is built on
// (package jail): its root, a tmpfs, is mounted there inside the jail's
// own mount namespace only, so the host always sees it empty.
func (vm *VM) JailDir() string { return filepath.Join(vm.RunDir, "jail") }
