package cli

import (
	"flag"
	"fmt"

	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
)

func planCmd() *command {
	var verbose bool
	return &command{
		name:  "plan",
		args:  "[-f FILE] [-v]",
		short: "show what apply would change, without changing it",
		long: `
Compares infra.toml with this host and prints the changes apply would make,
one per line, each as the command a person would type, or "no changes".
Warns about firewalls it does not own that would drop VM traffic. Reads the
host's network, so it needs root.

Examples:
  sudo microvm plan
  sudo microvm plan -f infra.toml -v     also print the nftables ruleset`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&verbose, "v", false, "also print the nftables ruleset the program loads")
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
			p, err := plan.Host(in)
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
