package cli

import (
	"flag"
	"fmt"

	"github.com/simple-microvm-infra/microvm/internal/plan"
)

func applyCmd() *command {
	var hostOnly bool
	return &command{
		name:  "apply",
		args:  "[-f FILE] --host-only",
		short: "make the host match infra.toml",
		long: `
Validates infra.toml, plans, and applies the plan, printing each change as it
makes it. The host part is what the seed's "nixos-rebuild switch" does for
the hypervisor: one bridge and TAP per VM, IPv4 forwarding, and one nftables
table (NAT, isolation between VMs, anti-spoofing, a closed host). VMs removed
from the file lose their bridge, TAP and rules; their data stays.

Applying twice changes nothing the second time, and an apply that failed or
was interrupted is completed by running it again.

Examples:
  sudo microvm apply --host-only
  sudo microvm apply -f /etc/microvm/infra.toml --host-only`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&hostOnly, "host-only", false, "apply only the host part (networks and firewall), not the VMs")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if !hostOnly {
				return fmt.Errorf("%w: this version manages the host part only; run: microvm apply --host-only", errUsage)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot(); err != nil {
				return err
			}
			p, err := plan.Host(in)
			if err != nil {
				return err
			}
			if err := p.Apply(e.stdout); err != nil {
				return fmt.Errorf("%w\nnothing was rolled back; fix the cause and run apply again to finish", err)
			}
			if len(p.Actions) == 0 {
				fmt.Fprintln(e.stdout, "no changes")
			}
			return nil
		},
	}
}
