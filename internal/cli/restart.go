package cli

import (
	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/runner"
)

func restartCmd() *command {
	var all bool
	return &command{
		name:  "restart",
		args:  "[-f FILE] NAME... | --all",
		short: "stop VMs cleanly and start them again",
		long: `
Stops each named VM cleanly (as down does) and starts it again (as up does),
with the settings infra.toml has now. A VM that is not running is just
started. The checks of up (image, VMM program, /dev/kvm) are made before
anything is stopped. --all restarts every VM of the file. Needs root.

Examples:
  sudo microvm restart vm1
  sudo microvm restart vm1 vm2
  sudo microvm restart --all`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&all, "all", false, "restart every VM of the file")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			in, m, vms, lock, err := e.lifecycleOf(args, all)
			if err != nil {
				return err
			}
			defer lock.Release()
			for _, vm := range vms {
				if err := runner.Preflight(in, vm); err != nil {
					return err
				}
			}
			for _, vm := range vms {
				if err := lifecycle.Restart(e.stdout, in, m, vm); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
