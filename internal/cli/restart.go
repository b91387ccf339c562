package cli

import (
	"github.com/simple-microvm-infra/microvm/internal/runner"
)

func restartCmd() *command {
	return &command{
		name:  "restart",
		args:  "[-f FILE] NAME...",
		short: "stop VMs cleanly and start them again",
		long: `
Stops each named VM cleanly (as down does) and starts it again (as up does),
with the settings infra.toml has now. A VM that is not running is just
started. The checks of up (image, VMM program, /dev/kvm) are made before
anything is stopped. Needs root.

Examples:
  sudo microvm restart vm1
  sudo microvm restart vm1 vm2`,
		run: func(e *env, args []string) error {
			in, m, vms, lock, err := e.lifecycleOf(args)
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
				if stateOf(m, vm).State != "stopped" {
					if err := stopVM(e, m, vm); err != nil {
						return err
					}
				}
				if err := startVM(e, in, m, vm, startTimeout); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
