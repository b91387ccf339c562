package runner

import (
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// protectState makes sure the VM's state directory is on a mount with
// nosuid and nodev before its guest runs (storage.Protect). With plain
// directories a mount it makes stays when the VM stops: the guest's device
// nodes and setuid programs stay inert while it is stopped too. With ZFS,
// whose datasets have setuid=off and devices=off, a mount is made only
// where ZFS ignores them (zfs-fuse), and the returned function unmounts it
// again when the VM stops, leaving the dataset as zfs left it. A
// supervisor killed before it could undo leaves the mount on the host:
// the next start finds it in place, and destroy unmounts it first.
func protectState(h config.Host, vm *config.VM) (undo func(), err error) {
	none := func() {}
	made, err := storage.Protect(vm.StateDir)
	if err != nil || !made || h.Storage != config.StorageZFS {
		return none, err
	}
	return func() { _ = unix.Unmount(vm.StateDir, unix.MNT_DETACH) }, nil
}
