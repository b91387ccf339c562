// Package plan computes what `microvm apply` will change on the host, from
// the model and what the host has now, and applies it.
package plan

import (
	"fmt"
	"io"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
)

// Plan is the list of actions that bring the host to the model, and warnings
// about things on the host the program will not change.
type Plan struct {
	Actions  []action.Action
	Warnings []string
}

// Host plans the host part: links, sysctls and the firewall. The firewall
// comes before forwarding and new links, so no VM network is ever up
// without its rules.
func Host(in *config.Infra) (*Plan, error) {
	if err := hostnet.Check(in); err != nil {
		return nil, err
	}
	fw, err := firewall.Diff(in)
	if err != nil {
		return nil, err
	}
	cleanup, setup, err := hostnet.Diff(in)
	if err != nil {
		return nil, err
	}
	p := &Plan{Warnings: firewall.Conflicts()}
	p.Actions = append(append(append(p.Actions, cleanup...), fw...), setup...)
	return p, nil
}

// Print writes the plan as a person would read it: one command per line.
func (p *Plan) Print(w io.Writer) {
	for _, warn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	if len(p.Actions) == 0 {
		fmt.Fprintln(w, "no changes")
		return
	}
	for _, a := range p.Actions {
		fmt.Fprintln(w, a)
	}
}

// Apply runs the actions in order, printing each as it goes, and stops at
// the first error. Every action is idempotent, so a failed or interrupted
// apply is finished by running apply again.
func (p *Plan) Apply(w io.Writer) error {
	for _, warn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	for _, a := range p.Actions {
		fmt.Fprintln(w, a)
		if err := a.Apply(); err != nil {
			return err
		}
	}
	return nil
}
