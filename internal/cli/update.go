package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

func updateCmd() *command {
	var all bool
	return &command{
		name:  "update",
		args:  "[-f FILE] NAME... | --all",
		short: "restart VMs whose settings, image or kernel changed (microvm -u NAME)",
		long: `
The seed's "microvm -u vm1": for each named VM that runs, compares what it
was started with (its effective settings in infra.toml, and the identity of
its image and kernel) with what it would start with now, and if anything
differs, says what, stops it cleanly, takes an automatic snapshot of its
/etc and /var (storage = "zfs" with keep_snapshots), and starts it again.
A VM that did not change is left running; one that is stopped is left
stopped (it starts with the new settings next time).

microvm.nix's -u only rebuilds, and restarts with -R; here -u restarts what
changed (its -R is accepted and changes nothing). To see what would
change first: microvm plan, or microvm status (changed VMs are marked *).

Rebuild an image first with microvm image build; update then restarts the
VMs that use it. Needs root.

Examples:
  sudo microvm update vm1
  sudo microvm -u vm1 vm2 vm3 vm4
  sudo microvm update --all`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&all, "all", false, "every VM of the file")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			in, m, vms, lock, err := e.lifecycleOf(args, all)
			if err != nil {
				return err
			}
			defer lock.Release()
			for _, vm := range vms {
				s := lifecycle.StateOf(m, vm)
				if s.State != lifecycle.Running {
					fmt.Fprintf(e.stdout, "%s is %s; it starts with the file's settings next time (microvm up %s)\n", vm.Name, s.State, vm.Name)
					continue
				}
				ch := lifecycle.Changes(in, vm, s.Started)
				if len(ch) == 0 {
					fmt.Fprintf(e.stdout, "%s is up to date; not restarted\n", vm.Name)
					continue
				}
				if err := runner.Preflight(in, vm); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s changed: %s; restarting\n", vm.Name, strings.Join(ch, ", "))
				if err := lifecycle.StopVM(e.stdout, m, vm); err != nil {
					return err
				}
				if snap, err := storage.SnapshotBeforeChange(in.Host, vm, "update"); err != nil {
					return fmt.Errorf("%w\n%s is stopped; start it with: microvm up %s", err, vm.Name, vm.Name)
				} else if snap != "" {
					fmt.Fprintf(e.stdout, "%s: snapshot %s taken\n", vm.Name, snap)
				}
				if err := lifecycle.StartVM(e.stdout, in, m, vm, lifecycle.StartTimeout); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
