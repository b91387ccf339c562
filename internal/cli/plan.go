package cli

import (
	"flag"
	"fmt"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
)

func planCmd() *command {
	var verbose, hostOnly bool
	return &command{
		name:  "plan",
		args:  "[-f FILE] [-v] [--host-only]",
		short: "show what apply would change, without changing it",
		long: `
Compares infra.toml with this host and prints the changes apply would make,
one per line, each as the command a person would type, or "no changes":
the host part, and the VMs to start, restart (saying what changed) or stop.
Warns about firewalls it does not own that would drop VM traffic. Reads the
host's network, so it needs root.

Examples:
  sudo microvm plan
  sudo microvm plan -f infra.toml -v     also print the nftables ruleset
  sudo microvm plan --host-only          only what apply --host-only would do`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&verbose, "v", false, "also print the nftables ruleset the program loads")
			fs.BoolVar(&hostOnly, "host-only", false, "plan only the host part (networks and firewall), as apply --host-only")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot(); err != nil {
				return err
			}
			p, err := planFor(e, in, hostOnly)
			if err != nil {
				return err
			}
			p.Print(e.stdout)
			if verbose {
				fmt.Fprintf(e.stdout, "\n# nftables table %s %s:\n%s", firewall.Family, firewall.Table, firewall.Ruleset(in))
			}
			return nil
		},
	}
}

// planFor plans the host part and, unless hostOnly, the VMs: what plan
// prints and apply does.
func planFor(e *env, in *config.Infra, hostOnly bool) (*plan.Plan, error) {
	if hostOnly {
		return plan.Host(in)
	}
	m, err := e.manager()
	if err != nil {
		return nil, err
	}
	return fullPlan(e, in, m)
}
