package cli

import "fmt"

func downCmd() *command {
	return &command{
		name:  "down",
		args:  "[-f FILE] NAME...",
		short: "stop VMs cleanly (systemctl stop microvm@NAME, or detached)",
		long: `
Stops the named VMs: each guest is asked to shut down (ctrl-alt-del for
QEMU, the power button for Cloud Hypervisor) and given 30 s; its VMM, then
its virtiofs daemons, stop after it. Their /etc and /var stay.

A VM that is not running is an error that changes nothing. Needs root.

Examples:
  sudo microvm down vm1
  sudo microvm down vm1 vm2 vm3 vm4`,
		run: func(e *env, args []string) error {
			_, m, vms, lock, err := e.lifecycleOf(args)
			if err != nil {
				return err
			}
			defer lock.Release()
			for _, vm := range vms {
				if stateOf(m, vm).State == "stopped" {
					return fmt.Errorf("%s is not running; nothing to stop", vm.Name)
				}
			}
			for _, vm := range vms {
				if err := stopVM(e, m, vm); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
