package runner

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// protectState makes sure the VM's state directory, whose etc and var the
// guest writes through virtiofsd as root, is on a mount with nosuid and
// nodev while the VM runs: a setuid program or a device node the guest
// makes there is inert on the host, whoever opens it, the virtiofs daemon
// included (a guest kernel can ask it to open any file of the share). ZFS
// datasets made by apply have setuid=off and devices=off, which gives
// this; elsewhere (storage = "dir", or a ZFS that ignores them) the
// directory is bind-mounted on itself with the two flags, and unmounted
// again by the returned function when the VM stops.
func protectState(vm *config.VM) (undo func(), err error) {
	none := func() {}
	var st unix.Statfs_t
	if err := unix.Statfs(vm.StateDir, &st); err != nil {
		return none, fmt.Errorf("checking the mount of %s: %w", vm.StateDir, err)
	}
	const want = unix.ST_NOSUID | unix.ST_NODEV
	if st.Flags&want == want {
		return none, nil
	}
	if err := unix.Mount(vm.StateDir, vm.StateDir, "", unix.MS_BIND, ""); err != nil {
		return none, fmt.Errorf("bind-mounting %s nosuid,nodev: %w", vm.StateDir, err)
	}
	// Undone when the VM stops or fails to start. A supervisor killed
	// before it could undo leaves the mount on the host: the next start
	// finds it in place (above), and destroy unmounts it first.
	undo = func() { _ = unix.Unmount(vm.StateDir, unix.MNT_DETACH) }
	// A bind mount takes its source's flags; new ones take a remount,
	// which must repeat those to keep (read-only never applies here).
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	for _, f := range []struct{ st, ms uintptr }{{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME}} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", vm.StateDir, "", flags, ""); err != nil {
		undo()
		return none, fmt.Errorf("remounting %s nosuid,nodev: %w", vm.StateDir, err)
	}
	return undo, nil
}
