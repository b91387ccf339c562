package cli

import (
	"fmt"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/spf13/pflag"
)

func downCmd() *command {
	var all, force bool
	var timeout time.Duration
	return &command{
		name:  "down",
		args:  "[-f FILE] [--timeout DURATION] [--force] NAME... | --all",
		short: "stop VMs cleanly (systemctl stop microvm@NAME, or detached)",
		long: `
Stops the named VMs: each guest is asked to shut down (ctrl-alt-del for
QEMU, the power button for Cloud Hypervisor) and given 30 s; its VMM, then
its virtiofs daemons, stop after it. Their /etc and /var stay.

--timeout kills the VMM (as a power cut would stop the VM) if the guest
has not shut down in time; --force does that at once, for a guest that
hangs. Either way the virtiofs daemons stop after it, and /etc and /var
stay; what the guest had not written is lost.

A VM left running without its supervisor (orphaned: its supervisor and
keeper were killed) has its processes killed, as no clean shutdown is left
to ask for. A VM that is not running is an error that changes nothing;
--all stops every VM that runs. Needs root.

Examples:
  sudo microvm down vm1
  sudo microvm down vm1 vm2 vm3 vm4
  sudo microvm down --all --timeout 10s
  sudo microvm down --force vm3         pull the plug`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&all, "all", false, "stop every VM that runs")
			fs.DurationVar(&timeout, "timeout", 0, "kill the VMM if the guest has not shut down after `DURATION` (0: wait for it)")
			fs.BoolVar(&force, "force", false, "kill the VMM at once instead of asking the guest to shut down")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			_, m, vms, lock, err := e.lifecycleOf(args, all)
			if err != nil {
				return err
			}
			defer lock.Release()
			if all {
				vms = lifecycle.InState(m, vms, lifecycle.Running, lifecycle.Starting, lifecycle.Orphaned)
			}
			for _, vm := range vms {
				if lifecycle.StateOf(m, vm).State == lifecycle.Stopped {
					return fmt.Errorf("%s is not running; nothing to stop", vm.Name)
				}
			}
			for _, vm := range vms {
				if err := lifecycle.StopVMWithin(e.stdout, m, vm, timeout, force); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
