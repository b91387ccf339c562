// Package action describes a change to the host as data: a plan is a list of
// actions, `microvm plan` prints them and `microvm apply` runs them.
package action

// Action is one change. String reads like the command a person would type to
// make the same change; Apply makes it. Applying an action whose change is
// already in place must succeed, so a re-run apply converges.
type Action interface {
	String() string
	Apply() error
}

// Optional is implemented by actions that the rest of a plan does not
// depend on: a VM's start (other VMs start without it), Tailscale's routes
// (a VM runs, and the host reaches it, without them). When one that reports
// true fails, the plan goes on and reports the failure at its end.
type Optional interface {
	Optional() bool
}

// Diff is what one part of the host (storage, firewall, links, Tailscale)
// lacks to match the model. Each part reads the host into a value first
// and then compares it with the model in a pure function, so that what it
// decides is tested without root. A plan runs every part's Cleanup before
// any part's Setup.
type Diff struct {
	// Cleanup removes what VMs that left the file had, and makes what the
	// rest needs first (a VM's user).
	Cleanup []Action
	// Setup brings the part to the model.
	Setup []Action
	// Warnings are said at every plan: what the program will not change.
	Warnings []string
	// Notes are said only with a plan that changes something, so an idle
	// plan stays "no changes".
	Notes []string
}

// Empty reports whether d changes nothing.
func (d Diff) Empty() bool { return len(d.Cleanup) == 0 && len(d.Setup) == 0 }
