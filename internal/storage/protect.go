package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// A VM's state directory, whose etc and var the guest writes through
// virtiofsd as root, must be on a mount with nosuid and nodev: then a
// setuid program or a device node the guest makes there is inert on the
// host, whoever opens it, the virtiofs daemon included (a guest kernel can
// ask it to open any file of the share). ZFS datasets made by apply have
// setuid=off and devices=off, which gives this. Elsewhere (storage =
// "dir", or a ZFS that ignores them) the directory is bind-mounted on
// itself with the two flags by the supervisor before the VM starts. With
// plain directories the mount stays when the VM stops, so the guest's
// nodes are inert whether or not it runs, and microvm-host.service makes
// it again at boot for every VM's directory (ProtectAll); destroy and
// teardown --data unmount it before they delete.

// Protected reports whether dir is on a mount with nosuid and nodev.
func Protected(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("checking the mount of %s: %w", dir, err)
	}
	const want = unix.ST_NOSUID | unix.ST_NODEV
	return st.Flags&want == want, nil
}

// Protect bind-mounts dir on itself with nosuid and nodev unless its mount
// has both already, and reports whether it did.
func Protect(dir string) (made bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("checking the mount of %s: %w", dir, err)
	}
	const want = unix.ST_NOSUID | unix.ST_NODEV
	if st.Flags&want == want {
		return false, nil
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return false, fmt.Errorf("bind-mounting %s nosuid,nodev: %w", dir, err)
	}
	// A bind mount takes its source's flags; new ones take a remount,
	// which must repeat those to keep (read-only never applies here).
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	for _, f := range []struct{ st, ms uintptr }{{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME}} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", dir, "", flags, ""); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH) // the remount's error is the one to report
		return false, fmt.Errorf("remounting %s nosuid,nodev: %w", dir, err)
	}
	return true, nil
}

// ProtectState bind-mounts a VM's state directory nosuid,nodev (Protect).
type ProtectState struct{ Dir string }

func (a *ProtectState) String() string {
	return "mount --bind " + a.Dir + " " + a.Dir + " && mount -o remount,bind,nosuid,nodev " + a.Dir + "  # the guest's device nodes and setuid programs stay inert"
}

func (a *ProtectState) Apply() error {
	_, err := Protect(a.Dir)
	return err
}

// UnprotectState unmounts the nosuid,nodev mounts of VM state directories
// (Protect's), before their data is deleted.
type UnprotectState struct{ Dirs []string }

func (a *UnprotectState) String() string { return "umount " + strings.Join(a.Dirs, " ") }

func (a *UnprotectState) Apply() error {
	for _, dir := range a.Dirs {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("umount %s: %w", dir, err)
		}
	}
	return nil
}

// vmStates lists the directories of h.StateDir that are, or were, a VM's:
// named as a VM may be, and marked by the program (config.VM.Marker).
func vmStates(h config.Host) ([]*config.VM, error) {
	d, err := safedir.Open(h.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Names()
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var vms []*config.VM
	for _, name := range names {
		if !config.IsVMName(name) {
			continue
		}
		vm := h.Departed(name)
		if st, err := d.Lstat(filepath.Join(name, filepath.Base(vm.Marker()))); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			vms = append(vms, vm)
		}
	}
	return vms, nil
}

// ProtectAll returns the actions that protect every VM state directory of
// h that is not, with plain directories: what `microvm host` does at boot,
// before any VM starts, so that the trees of VMs that do not start are
// inert too. It is not a step of apply's plan: apply may run in a mount
// namespace of its own (ip netns exec, as the tests and the demo run it),
// where a mount it makes is gone when it exits, and its plan would never
// be empty. With ZFS, the datasets' properties do it.
func ProtectAll(h config.Host) ([]action.Action, error) {
	if h.Storage == config.StorageZFS {
		return nil, nil
	}
	vms, err := vmStates(h)
	if err != nil {
		return nil, fmt.Errorf("listing the VMs' data in %s: %w", h.StateDir, err)
	}
	var acts []action.Action
	for _, vm := range vms {
		ok, err := Protected(vm.StateDir)
		if err != nil {
			return nil, err
		}
		if !ok {
			acts = append(acts, &ProtectState{Dir: vm.StateDir})
		}
	}
	return acts, nil
}

// protectMounts lists the VM state directories of h that are mount
// points: with plain directories, Protect's bind mounts.
func protectMounts(h config.Host) []string {
	points, err := mountinfo.Points()
	if err != nil {
		return nil
	}
	vms, _ := vmStates(h)
	var dirs []string
	for _, vm := range vms {
		if slices.Contains(points, vm.StateDir) {
			dirs = append(dirs, vm.StateDir)
		}
	}
	return dirs
}

// RemoveState deletes the VM state directory dir with everything in it,
// following no symlink, after unmounting what is mounted on it (Protect's
// mount): how the tests and benchmarks start a VM from fresh state.
// destroy does the same after its checks.
func RemoveState(dir string) error {
	for {
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // not a mount point (any more), or not there
		}
		if err != nil {
			return fmt.Errorf("umount %s: %w", dir, err)
		}
	}
	d, err := safedir.Open(filepath.Dir(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	return d.RemoveAll(filepath.Base(dir))
}
