package cli

import (
	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
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
				if err := lifecycle.Update(e.stdout, in, m, vm); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
