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
