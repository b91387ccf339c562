// Package plan computes what `microvm apply` will change on the host, from
// the model and what the host has now, and applies it.
package plan

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// Plan is the list of actions that bring the host to the model, warnings
// about things on the host the program will not change, notes: things
// worth saying when the plan changes something (a plan without actions
// prints only "no changes"), and errors: what the host lacks for the plan
// to succeed (a VMM program, an image, ...), found before anything
// changes. A plan with errors is not applied.
type Plan struct {
	Actions  []action.Action
	Warnings []string
	Notes    []string
	Errors   []error
}

// Host plans the host part: storage, the firewall, links and users, and
// Tailscale's routes. Each part is read from the host before anything is
// decided, so a host without ZFS, say, is told so before anything changes.
// Each kind of host state is read once: the links, addresses, routes and
// users that Check validates are those Diff decides from.
func Host(in *config.Infra) (*Plan, error) {
	host, err := hostnet.Observe(in)
	if err != nil {
		return nil, err
	}
	if err := host.Check(in); err != nil {
		return nil, err
	}
	store, err := storage.For(in.Host).Diff(in)
	if err != nil {
		return nil, err
	}
	fw, err := firewall.Diff(in)
	if err != nil {
		return nil, err
	}
	return assemble(store, fw, host.Diff(in), tailscale.Diff(in)), nil
}

// assemble orders the parts' changes. Setup runs in the order of parts:
// storage, so a VM's datasets exist before anything could start it; the
// firewall before forwarding and new links, so no VM network is ever up
// without its rules; links; and Tailscale's routes last, once there is a
// network behind them. Cleanup runs before it, in the reverse order:
// the routes of removed VMs are withdrawn while their bridges still show
// they were the program's, then those links are deleted.
func assemble(parts ...action.Diff) *Plan {
	p := &Plan{}
	for i := len(parts) - 1; i >= 0; i-- {
		p.Actions = append(p.Actions, parts[i].Cleanup...)
	}
	var notes []string
	for _, d := range parts {
		p.Actions = append(p.Actions, d.Setup...)
		p.Warnings = append(p.Warnings, d.Warnings...)
		notes = append(notes, d.Notes...)
	}
	if len(p.Actions) > 0 {
		p.Notes = notes
	}
	return p
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
	p.printNotes(w)
}

func (p *Plan) printNotes(w io.Writer) {
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// Apply runs the actions in order, printing each as it goes, and stops at
// the first error, except an optional action's (action.Optional): it says
// so, goes on, and returns them all at the end as Skipped. Every action is
// idempotent, so a failed or interrupted apply is finished by running apply
// again.
func (p *Plan) Apply(w io.Writer) error {
	if len(p.Errors) > 0 {
		return fmt.Errorf("nothing was changed: %w", errors.Join(p.Errors...))
	}
	for _, warn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	var skipped Skipped
	for _, a := range p.Actions {
		fmt.Fprintln(w, a)
		if err := a.Apply(); err != nil {
			if o, ok := a.(action.Optional); ok && o.Optional() {
				fmt.Fprintf(w, "warning: %v; going on with the rest\n", err)
				skipped = append(skipped, err)
				continue
			}
			return err
		}
	}
	p.printNotes(w)
	if len(skipped) > 0 {
		return skipped
	}
	return nil
}

// Skipped are the errors of optional actions that failed while the rest of
// the plan was applied.
type Skipped []error

func (s Skipped) Error() string {
	var msgs []string
	for _, err := range s {
		msgs = append(msgs, err.Error())
	}
	return fmt.Sprintf("%d change(s) failed, the rest was applied: %s", len(s), strings.Join(msgs, "; "))
}
