package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/plan"
)

func planCmd() *command {
	var verbose, hostOnly, asJSON, detailed bool
	return &command{
		name:  "plan",
		args:  "[-f FILE] [-v] [--host-only] [--json] [--detailed-exitcode]",
		short: "show what apply would change, without changing it",
		long: `
Compares infra.toml with this host and prints the changes apply would make,
one per line, each as the command a person would type, or "no changes":
the host part, and the VMs to start, restart (saying what changed) or stop.
Warns about firewalls it does not own that would drop VM traffic.

It also runs every check apply would make before it changes anything, for
every VM it would start or restart: the VMM's program installed, /dev/kvm
where it is needed (Cloud Hypervisor, or accel = "kvm"), the image built,
microvm-init beside microvm, state_dir and run_dir reachable by the VMM's
user, no VM subnet on a network the host already has. Each problem is
reported, and plan exits 1: apply refuses while any remain.

It reads the host's network, firewall and VMs, so it needs root; it
changes nothing.

--detailed-exitcode exits 0 when there is nothing to do, 2 when apply
would change something, and 1 on an error, as terraform plan does.

Examples:
  sudo microvm plan
  sudo microvm plan -f infra.toml -v     also print the nftables ruleset and the policy routing
  sudo microvm plan --host-only          only what apply --host-only would do
  sudo microvm plan --json               for scripts (docs/cli.md)`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVarP(&verbose, "verbose", "v", false, "also print the nftables ruleset and the policy routing")
			fs.BoolVar(&hostOnly, "host-only", false, "plan only the host part (networks and firewall), as apply --host-only")
			fs.BoolVar(&asJSON, "json", false, "print the plan as JSON")
			fs.BoolVar(&detailed, "detailed-exitcode", false, "exit 2 when there are changes, 0 when there are none")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot("it reads the host's network, firewall and VMs to compare them with the file (and changes nothing)"); err != nil {
				return err
			}
			p, err := planFor(e, in, hostOnly)
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(e.stdout, planJSON(in, p)); err != nil {
					return err
				}
			} else if len(p.Actions) > 0 || len(p.Errors) == 0 {
				p.Print(e.stdout)
				if verbose {
					fmt.Fprintf(e.stdout, "\n# nftables table %s %s:\n%s", firewall.Family, firewall.Table, firewall.Ruleset(in))
					fmt.Fprintf(e.stdout, "\n# policy routing, the second layer between VMs (ip rule; ip route show table %d):\n%s", config.RouteTable, hostnet.Routing(in))
					printSources(e, in)
				}
			}
			switch {
			case len(p.Errors) > 0 && asJSON:
				return exitStatus(1)
			case len(p.Errors) > 0:
				return errors.Join(append(p.Errors, errors.New("apply refuses until these are fixed; nothing was changed"))...)
			case detailed && len(p.Actions) > 0:
				return exitStatus(2)
			}
			return nil
		},
	}
}

// planFor plans the host part and, unless hostOnly, the VMs: what plan
// prints and apply does. Problems the checks find are in the plan's
// Errors.
func planFor(e *env, in *config.Infra, hostOnly bool) (*plan.Plan, error) {
	if hostOnly {
		p, err := plan.Host(in)
		if err != nil {
			return &plan.Plan{Errors: []error{err}}, nil
		}
		return p, nil
	}
	m, err := e.manager()
	if err != nil {
		return nil, err
	}
	return lifecycle.Plan(e.stdout, in, m)
}

// planDoc is plan --json.
type planDoc struct {
	Version  int          `json:"version" doc:"the version of this document's format"`
	File     string       `json:"file" doc:"the infra.toml read"`
	Changes  int          `json:"changes" doc:"how many changes apply would make; 0 is \"no changes\""`
	Actions  []planAction `json:"actions" doc:"the changes, in the order apply makes them"`
	Warnings []string     `json:"warnings" doc:"what on the host the program will not change but should be known (another firewall that drops VM traffic, ...)"`
	Notes    []string     `json:"notes" doc:"what is worth saying with a plan that changes something"`
	Errors   []string     `json:"errors" doc:"what the host lacks for apply to succeed; apply refuses while there are any, and plan exits 1"`
}

// planAction is one change of plan --json.
type planAction struct {
	Command string `json:"command" doc:"the change, as the command a person would type"`
}

func planJSON(in *config.Infra, p *plan.Plan) planDoc {
	d := planDoc{Version: jsonVersion, File: in.File, Changes: len(p.Actions),
		Actions: []planAction{}, Warnings: orEmpty(p.Warnings), Notes: []string{}, Errors: []string{}}
	for _, a := range p.Actions {
		d.Actions = append(d.Actions, planAction{Command: a.String()})
	}
	if len(p.Actions) > 0 {
		d.Notes = orEmpty(p.Notes)
	}
	for _, err := range p.Errors {
		d.Errors = append(d.Errors, err.Error())
	}
	return d
}

// printSources says where each allow, opening and publish entry of the
// ruleset is written: the ruleset itself names none of it, so that a rule
// stays the same rule when lines of the file move.
func printSources(e *env, in *config.Infra) {
	var lines []string
	for _, a := range in.Host.Allow {
		lines = append(lines, fmt.Sprintf("#   allow %s (every VM): %s", a, a.At))
	}
	for _, vm := range in.VMs {
		for _, a := range vm.Allow {
			lines = append(lines, fmt.Sprintf("#   allow %s (%s): %s", a, vm.Name, a.At))
		}
		for _, p := range vm.Publish {
			lines = append(lines, fmt.Sprintf("#   publish %s (%s): %s", p, vm.Name, p.At))
		}
	}
	if len(lines) > 0 {
		fmt.Fprintf(e.stdout, "\n# where its allow and publish entries are written:\n%s\n", strings.Join(lines, "\n"))
	}
}
