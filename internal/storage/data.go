package storage

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// The deletion of VM data, which only `microvm destroy` and `microvm
// teardown --data` ask for, as each backend keeps it.

func (d *Dir) Holds(vm *config.VM) string {
	if vm == nil {
		return d.Host.StateDir
	}
	return vm.StateDir
}

func (d *Dir) Mounts(vm *config.VM) int { return 0 }

// Destroy unmounts the nosuid,nodev mount of vm's directory (of every
// VM's with vm nil), which stays when a VM stops (see Protect), so that
// the files can be removed.
func (d *Dir) Destroy(vm *config.VM) action.Action {
	dirs := protectMounts(d.Host)
	if vm != nil {
		dirs = slices.DeleteFunc(dirs, func(dir string) bool { return dir != vm.StateDir })
	}
	if len(dirs) == 0 {
		return nil
	}
	return &UnprotectState{Dirs: dirs}
}

func (z *ZFS) Holds(vm *config.VM) string {
	if vm == nil {
		return "ZFS dataset " + z.Host.ZFSDataset + " and everything in it"
	}
	return "ZFS dataset " + z.Host.VMDataset(vm) + " and all its snapshots"
}

func (z *ZFS) Mounts(vm *config.VM) int { return 1 }

// Destroy destroys vm's dataset, or with vm nil the whole tree under
// zfs_dataset if it exists (teardown's plan lists only what is there).
func (z *ZFS) Destroy(vm *config.VM) action.Action {
	if vm != nil {
		return &DestroyDataset{Name: z.Host.VMDataset(vm)}
	}
	if !exists(z.Host.ZFSDataset) {
		return nil
	}
	return &DestroyDataset{Name: z.Host.ZFSDataset, Note: "every VM's /etc and /var, their snapshots, the images"}
}

// DestroyDataset destroys a dataset with its children and snapshots.
type DestroyDataset struct {
	Name string
	Note string // what it holds, for the plan
}

func (a *DestroyDataset) String() string {
	s := "zfs destroy -r " + a.Name
	if a.Note != "" {
		s += "  # " + a.Note
	}
	return s
}

// Apply tries for up to 5 s while zfs says a dataset is busy, as
// runUnbusy does: zfs-fuse says so for a moment after an unmount.
func (a *DestroyDataset) Apply() error {
	for i := 0; ; i++ {
		b, err := exec.Command("zfs", "destroy", "-r", a.Name).CombinedOutput()
		if err == nil {
			return nil
		}
		if i == 20 || !strings.Contains(string(b), "is busy") {
			return fmt.Errorf("zfs destroy -r %s: %s", a.Name, strings.TrimSpace(string(b)))
		}
		time.Sleep(250 * time.Millisecond)
	}
}
