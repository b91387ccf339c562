package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

func destroyCmd() *command {
	var data, yes bool
	return &command{
		name:  "destroy",
		args:  "[-f FILE] --data [--yes] NAME",
		short: "delete the /etc and /var of a VM that left infra.toml",
		long: `
Deletes everything the VM NAME kept: its /etc and /var (STATE_DIR/NAME, or
its ZFS dataset with every snapshot), its run directory and its user
(USER-NAME). This cannot be undone, so --data must be given and the
command asks first, unless --yes.

Only for a VM that is no longer in infra.toml and is stopped: apply stops
VMs that left the file and keeps their data, for this command to delete.
Only what the program made for a VM is deleted: NAME must be a VM name, and
STATE_DIR/NAME must carry the mark the program leaves when it first starts
a VM; anything else in state_dir (the images, the admin key, your own
files) is refused.

Examples:
  sudo microvm destroy --data vm5
  sudo microvm destroy --data --yes vm5`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&data, "data", false, "delete the VM's data (required: it says what happens)")
			fs.BoolVar(&yes, "yes", false, "do not ask for confirmation")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name one VM", errUsage)
			}
			if !data {
				return fmt.Errorf("%w: destroy deletes the VM's /etc and /var; say so with --data", errUsage)
			}
			in, m, lock, err := e.lifecycle()
			if err != nil {
				return err
			}
			defer lock.Release()
			name := args[0]
			if what, ok := config.ReservedNames[name]; ok {
				return fmt.Errorf("%s is not a VM: STATE_DIR/%s holds %s; destroy deletes only a VM's data", name, name, what)
			}
			if !config.IsVMName(name) {
				return fmt.Errorf("%q is not a VM name", name)
			}
			if _, ok := in.VM(name); ok {
				return fmt.Errorf("%s is still in %s; remove it from the file and run apply first", name, in.File)
			}
			vm := in.Host.Departed(name)
			if lifecycle.StateOf(m, vm).State != lifecycle.Stopped {
				return fmt.Errorf("%s is still running; run apply (it stops VMs that left the file) or microvm down first", name)
			}
			data := storage.For(in.Host)
			isVM, err := guest.IsVMState(vm)
			if err != nil {
				return fmt.Errorf("checking %s: %w", vm.StateDir, err)
			}
			if !isVM {
				// Without a mount of the backend's own, the directory is all
				// the data there is.
				if _, err := os.Lstat(vm.StateDir); os.IsNotExist(err) && data.Mounts(vm) == 0 {
					return fmt.Errorf("%s has no data here (%s does not exist)", name, vm.StateDir)
				}
				return fmt.Errorf("%s is not the data of a VM called %s (it lacks the mark %s that microvm writes when it first starts a VM); nothing is deleted", vm.StateDir, name, filepath.Base(vm.Marker()))
			}
			what := data.Holds(vm)
			if !yes {
				ok, err := confirm(e.stdin, e.stdout, fmt.Sprintf("Delete %s's /etc and /var (%s)? This cannot be undone.\nType yes to delete: ", name, what))
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("not confirmed; %s's data is unchanged", name)
				}
			}
			// The nosuid,nodev mount of the VM's directory goes first
			// (storage.Protect: it stays when the VM stops with plain
			// directories; with ZFS a supervisor killed before it could
			// clean up leaves it, on top of the dataset's own mount).
			for {
				points, err := mountinfo.Points()
				if err != nil || count(points, vm.StateDir) <= data.Mounts(vm) {
					break
				}
				if err := unix.Unmount(vm.StateDir, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmounting %s: %w", vm.StateDir, err)
				}
			}
			if a := data.Destroy(vm); a != nil {
				if err := a.Apply(); err != nil {
					return err
				}
			}
			for _, dir := range []string{vm.StateDir, vm.RunDir} {
				if err := removeAll(dir); err != nil {
					return err
				}
			}
			if err := (&hostnet.DelUser{Name: vm.User, VM: name}).Apply(); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s destroyed: %s, its run directory and its user %s deleted\n", name, what, vm.User)
			return nil
		},
	}
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// removeAll deletes dir and everything in it, following no symlink.
func removeAll(dir string) error {
	parent, err := safedir.Open(filepath.Dir(dir))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer parent.Close()
	return parent.RemoveAll(filepath.Base(dir))
}
