package config

import (
	"path/filepath"

	"github.com/pelletier/go-toml/v2/unstable"
)

// image_writable = true gives one VM a root filesystem of its own to write
// to, as microvm.nix's writableStoreOverlay does: an overlay whose lower
// layers are the shared image and whose upper layer lives in the VM's
// state (STATE_DIR/NAME/image), so `apt-get install` works in that VM and
// survives its restarts. The shared image stays read-only for every VM.
// Off by default: a VM's packages belong in an [image.NAME], where they
// are declared, shared and rebuilt.

// writable reads image_writable into vm.
func (p *parser) writable(vm *VM, vals map[string]*value, key string) {
	v, ok := vals["image_writable"]
	if !ok {
		return
	}
	if v.kind != unstable.Bool {
		p.errorf(v.pos, "%s.image_writable must be true or false, not %s", key, kindName(v.kind))
		return
	}
	vm.ImageWritable = v.str == "true"
}

// ImageUpper is the upper layer of vm's writable image (image_writable):
// what the VM wrote over the shared image. It is in the VM's state
// directory, which only root reaches, beside (not inside) the trees the
// guest sees as /etc and /var.
func (vm *VM) ImageUpper() string { return filepath.Join(vm.StateDir, "image", "upper") }

// ImageWork is overlayfs' work directory for ImageUpper, on the same
// filesystem.
func (vm *VM) ImageWork() string { return filepath.Join(vm.StateDir, "image", "work") }

// RootView is where vm's writable image is mounted, the overlay its
// "image" share serves: in the VM's run directory, which is root's.
func (vm *VM) RootView() string { return filepath.Join(vm.RunDir, "root") }
