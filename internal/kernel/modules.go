package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GuestModules are the modules a guest's init loads. [Modules] adds what
// they depend on (virtio, virtio_ring, fuse, ...).
var GuestModules = []string{
	"virtio_mmio", // QEMU's microvm machine puts virtio devices on MMIO
	"virtio_pci",  // Cloud Hypervisor puts them on PCI
	"virtio_net",  // eth0
	"virtiofs",    // the shared image and the VM's own /etc and /var
	"virtio_blk",  // volumes ([vm.NAME.volumes])
	"ext4",        // their filesystem
	// The ACPI power button, how both VMMs ask the guest to shut down;
	// loaded here rather than by udev, which a lean image does without.
	"button",
}

// Modules returns the files of the named modules of the module tree modDir
// (/lib/modules/VERSION) and of all they depend on, in an order they can be
// loaded in: each after its dependencies, none twice. Modules built into
// the kernel need no file and are left out.
func Modules(modDir string, names ...string) ([]string, error) {
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("reading module dependencies: %w", err)
	}
	builtinList, err := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("reading built-in modules: %w", err)
	}
	builtin := map[string]bool{}
	for _, path := range strings.Fields(string(builtinList)) {
		builtin[moduleName(path)] = true
	}
	// Each line of modules.dep is "path: dependency-path ...", the paths
	// relative to modDir.
	paths := map[string]string{}  // module name -> its path
	deps := map[string][]string{} // path -> paths of its dependencies
	for _, line := range strings.Split(string(dep), "\n") {
		path, list, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		paths[moduleName(path)] = path
		deps[path] = strings.Fields(list)
	}

	var order []string
	seen := map[string]bool{}
	var visit func(path string)
	visit = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		for _, d := range deps[path] {
			visit(d)
		}
		order = append(order, filepath.Join(modDir, path))
	}
	for _, name := range names {
		name = strings.ReplaceAll(name, "-", "_")
		switch path, ok := paths[name]; {
		case ok:
			visit(path)
		case builtin[name]:
			// Nothing to load.
		default:
			return nil, fmt.Errorf("resolving module %s: not in %s/modules.dep or modules.builtin", name, modDir)
		}
	}
	return order, nil
}

// moduleName returns the name of the module at path, the way the kernel
// spells it: kernel/drivers/char/hw_random/virtio-rng.ko.xz is virtio_rng.
func moduleName(path string) string {
	name, _, _ := strings.Cut(filepath.Base(path), ".ko")
	return strings.ReplaceAll(name, "-", "_")
}
