package cli

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
)

func upCmd() *command {
	var all, wait bool
	var waitTimeout time.Duration
	return &command{
		name:  "up",
		args:  "[-f FILE] [--wait [--wait-timeout DURATION]] NAME... | --all",
		short: "start VMs (systemctl start microvm@NAME, or detached)",
		long: `
Starts the named VMs and returns once each VMM runs; the guests boot in the
background (watch with microvm logs --console NAME, or microvm status).
With --wait, it returns once every guest is ready: its sshd answers, as
microvm status shows (GUEST ready), or fails after --wait-timeout.

Where systemd is PID 1 this is systemctl start microvm@NAME. Elsewhere
(containers, CI) the supervisor, microvm run NAME, runs detached under a
keeper that restarts it within seconds if it fails (as systemd's
Restart=on-failure does), with its pid file and log in RUN_DIR/NAME.

Refuses, changing nothing, a VM that is already running, an image that is
not built, a missing qemu or cloud-hypervisor, a missing /dev/kvm, and a
host that lacks what the VM needs (its bridge and TAP, its storage, the
firewall table). The rest of the host part, Tailscale's routes included, is
only a warning in its log. --all starts every VM of the file that is
stopped. Without systemd it also starts microvm host --detached, which
keeps the firewall while VMs run. Needs root.

Examples:
  sudo microvm up vm1
  sudo microvm up -f /etc/microvm/infra.toml vm1 vm2
  sudo microvm up --wait vm1 && ssh root@10.1.0.2
  sudo microvm up --all`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&all, "all", false, "start every VM of the file that is stopped")
			fs.BoolVar(&wait, "wait", false, "return once each guest's sshd answers")
			fs.DurationVar(&waitTimeout, "wait-timeout", 5*time.Minute, "how long --wait waits for the guests")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			in, m, vms, lock, err := e.lifecycleOf(args, all)
			if err != nil {
				return err
			}
			defer lock.Release()
			if all {
				vms = lifecycle.InState(m, vms, lifecycle.Stopped)
			}
			for _, vm := range vms {
				if s := lifecycle.StateOf(m, vm); s.State != lifecycle.Stopped {
					return fmt.Errorf("%s is already %s; to start it again: microvm restart %s", vm.Name, s.State, vm.Name)
				}
			}
			began := time.Now()
			for _, vm := range vms {
				if err := lifecycle.StartVM(e.stdout, in, m, vm, lifecycle.StartTimeout); err != nil {
					return err
				}
			}
			if !wait {
				return nil
			}
			for _, vm := range vms {
				if err := lifecycle.WaitReady(e.stdout, m, vm, began.Add(waitTimeout)); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
