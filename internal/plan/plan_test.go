package plan

import (
	"slices"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/action"
)

// step is an action that only has a name.
type step string

func (s step) String() string { return string(s) }
func (s step) Apply() error   { return nil }

func steps(names ...string) []action.Action {
	var out []action.Action
	for _, n := range names {
		out = append(out, step(n))
	}
	return out
}

// TestAssemble checks the order of a host plan from the parts' diffs, in
// the order Host passes them: every cleanup before any setup, cleanups in
// the reverse order of the parts, and notes only with a plan that changes
// something.
func TestAssemble(t *testing.T) {
	for _, tt := range []struct {
		name                  string
		store, fw, links, ts  action.Diff
		actions, warns, notes []string
	}{
		{name: "everything",
			store:   action.Diff{Setup: steps("zfs create"), Warnings: []string{"dataset kept"}},
			fw:      action.Diff{Setup: steps("nft -f"), Warnings: []string{"docker drops"}},
			links:   action.Diff{Cleanup: steps("ip link del vm-old", "ip link del br-old"), Setup: steps("useradd", "ip link add br-vm1")},
			ts:      action.Diff{Cleanup: steps("withdraw"), Setup: steps("advertise"), Notes: []string{"approve"}},
			actions: []string{"withdraw", "ip link del vm-old", "ip link del br-old", "zfs create", "nft -f", "useradd", "ip link add br-vm1", "advertise"},
			warns:   []string{"dataset kept", "docker drops"},
			notes:   []string{"approve"}},
		{name: "nothing to change: notes are not said",
			store: action.Diff{Warnings: []string{"dataset kept"}},
			ts:    action.Diff{Notes: []string{"tailscaled is not running"}, Warnings: []string{"logged out"}},
			warns: []string{"dataset kept", "logged out"}},
		{name: "a change elsewhere says the notes",
			links:   action.Diff{Setup: steps("sysctl -w net.ipv4.ip_forward=1")},
			ts:      action.Diff{Notes: []string{"tailscaled is not running"}},
			actions: []string{"sysctl -w net.ipv4.ip_forward=1"},
			notes:   []string{"tailscaled is not running"}},
	} {
		p := assemble(tt.store, tt.fw, tt.links, tt.ts)
		var got []string
		for _, a := range p.Actions {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tt.actions) || !slices.Equal(p.Warnings, tt.warns) || !slices.Equal(p.Notes, tt.notes) {
			t.Errorf("%s:\ngot  %q, warnings %q, notes %q\nwant %q, warnings %q, notes %q", tt.name, got, p.Warnings, p.Notes, tt.actions, tt.warns, tt.notes)
		}
	}
}
