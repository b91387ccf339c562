package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// destroyStdin is where destroy reads its confirmation; tests replace it.
var destroyStdin io.Reader = os.Stdin

func destroyCmd() *command {
	var data, yes bool
	return &command{
		name:  "destroy",
		args:  "[-f FILE] --data [--yes] NAME",
		short: "delete the /etc and /var of a VM that left infra.toml",
		long: `
Deletes everything the VM NAME kept: its /etc and /var (STATE_DIR/NAME, or
its ZFS dataset with every snapshot) and its run directory. This cannot be
undone, so --data must be given and the command asks first, unless --yes.

Only for a VM that is no longer in infra.toml and is stopped: apply stops
VMs that left the file and keeps their data, for this command to delete.

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
			if !config.IsImageName(name) {
				return fmt.Errorf("%q is not a VM name", name)
			}
			if _, ok := in.VM(name); ok {
				return fmt.Errorf("%s is still in %s; remove it from the file and run apply first", name, in.File)
			}
			vm := &config.VM{Name: name, StateDir: filepath.Join(in.Host.StateDir, name), RunDir: in.Host.VMRunDir(name)}
			if m.Active(vm) || stateOf(m, vm).State != "stopped" {
				return fmt.Errorf("%s is still running; run apply (it stops VMs that left the file) or microvm down first", name)
			}
			what := vm.StateDir
			if in.Host.Storage == "zfs" {
				what = "ZFS dataset " + in.Host.VMDataset(vm) + " and all its snapshots"
			}
			if _, err := os.Stat(vm.StateDir); os.IsNotExist(err) && in.Host.Storage != "zfs" {
				return fmt.Errorf("%s has no data here (%s does not exist)", name, vm.StateDir)
			}
			if !yes {
				fmt.Fprintf(e.stdout, "Delete %s's /etc and /var (%s)? This cannot be undone.\nType yes to delete: ", name, what)
				line, _ := bufio.NewReader(destroyStdin).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(line)); a != "yes" && a != "y" {
					fmt.Fprintln(e.stdout)
					return fmt.Errorf("not confirmed; %s's data is unchanged", name)
				}
			}
			if in.Host.Storage == "zfs" {
				if out, err := exec.Command("zfs", "destroy", "-r", in.Host.VMDataset(vm)).CombinedOutput(); err != nil {
					return fmt.Errorf("zfs destroy -r %s: %s", in.Host.VMDataset(vm), strings.TrimSpace(string(out)))
				}
			}
			if err := os.RemoveAll(vm.StateDir); err != nil {
				return err
			}
			if err := os.RemoveAll(vm.RunDir); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s destroyed: %s deleted\n", name, what)
			return nil
		},
	}
}
