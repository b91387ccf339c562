package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func applyCmd() *command {
	var hostOnly bool
	return &command{
		name:  "apply",
		args:  "[-f FILE] [--host-only]",
		short: "make the host match infra.toml",
		long: `
Validates infra.toml, plans, and applies the plan, printing each change as it
makes it. The host part is what the seed's "nixos-rebuild switch" does for
the hypervisor: one bridge and TAP per VM, IPv4 forwarding, and one nftables
table (NAT, isolation between VMs, anti-spoofing, a closed host). VMs removed
from the file lose their bridge, TAP and rules; their data stays.

Then the VMs (unless --host-only): every VM with autostart = true (the
default) that is not running is started; a running VM whose effective
settings, image or kernel changed since it started is restarted, and the
plan says what changed; the others are left alone. VMs no longer in the
file are stopped before their network goes; their /etc and /var stay
(microvm destroy NAME --data deletes them). Where systemd is PID 1, apply
installs microvm@.service and microvms.target and enables the autostart
VMs, so they start at boot; elsewhere the VMs run detached (see up).
Only one apply (or up, down, restart, update) runs at a time.

Before it changes anything, apply makes the checks plan reports (the VMM's
program, /dev/kvm, the image, microvm-init, state_dir reachable by the VMM's
user, the host's networks) and refuses, changing nothing, if any fails.

Applying twice changes nothing the second time, and an apply that failed or
was interrupted is completed by running it again. To remove everything
apply made, run microvm teardown.

Examples:
  sudo microvm apply
  sudo microvm apply -f /etc/microvm/infra.toml
  sudo microvm apply --host-only          networks and firewall only`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&hostOnly, "host-only", false, "apply only the host part (networks and firewall), not the VMs")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			return applyFile(e, hostOnly)
		},
	}
}

// applyFile is apply: of the file e names, which microvm host --fleet
// also calls with its part.
func applyFile(e *env, hostOnly bool) error {
	in, err := e.load()
	if err != nil {
		return err
	}
	if err := notWholeFleet(in); err != nil {
		return err
	}
	if err := needRoot(changesHost); err != nil {
		return err
	}
	if !hostOnly {
		// Starting and stopping VMs: one command at a time.
		lock, err := supervise.TakeLock(in.Host)
		if err != nil {
			return err
		}
		defer lock.Release()
	}
	p, err := planFor(e, in, hostOnly)
	if err != nil {
		return err
	}
	if len(p.Errors) > 0 {
		return errors.Join(append(p.Errors, errors.New("nothing was changed; fix these and run apply again (microvm plan shows them too)"))...)
	}
	if err := p.Apply(e.stdout); err != nil {
		return fmt.Errorf("%w\nnothing was rolled back; fix the cause and run apply again to finish", err)
	}
	if len(p.Actions) == 0 {
		fmt.Fprintln(e.stdout, "no changes")
	}
	return nil
}

// notWholeFleet refuses to run a fleet's whole file on one host: each host
// runs its part, which microvm host --fleet writes.
func notWholeFleet(in *config.Infra) error {
	if in.IsFleet() && in.Part.Host == "" {
		return fmt.Errorf("%s is a fleet's file ([fleet.host.NAME]); push it with microvm fleet push, and run microvm host --fleet on each host (docs/fleet.md)", in.File)
	}
	return nil
}
