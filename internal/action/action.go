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
