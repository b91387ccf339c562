package tailscale

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// prefixes parses "10.1.0.0/24 10.2.0.0/24" ("" is none).
func prefixes(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range strings.Fields(s) {
		out = append(out, netip.MustParsePrefix(f))
	}
	return out
}

func str(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return strings.Join(out, " ")
}

// TestChanges covers the route bookkeeping of apply: the user's routes are
// kept, VM subnets are added, the subnets of removed VMs are withdrawn, and
// a second apply changes nothing.
func TestChanges(t *testing.T) {
	tests := []struct {
		name                 string
		cur, vms, gone       string
		withdraw, add, final string
	}{
		{name: "fresh host",
			vms:   "10.1.0.0/24 10.2.0.0/24",
			add:   "10.1.0.0/24 10.2.0.0/24",
			final: "10.1.0.0/24 10.2.0.0/24"},
		{name: "user routes kept, VM subnets appended",
			cur:   "192.168.1.0/24 0.0.0.0/0 ::/0",
			vms:   "10.1.0.0/24",
			add:   "10.1.0.0/24",
			final: "192.168.1.0/24 0.0.0.0/0 ::/0 10.1.0.0/24"},
		{name: "nothing to do",
			cur:   "10.1.0.0/24 192.168.1.0/24 10.2.0.0/24",
			vms:   "10.2.0.0/24 10.1.0.0/24",
			final: "10.1.0.0/24 192.168.1.0/24 10.2.0.0/24"},
		{name: "removed VM withdrawn, user route kept",
			cur:      "10.1.0.0/24 192.168.1.0/24 10.4.0.0/24",
			vms:      "10.1.0.0/24",
			gone:     "10.4.0.0/24",
			withdraw: "10.4.0.0/24",
			final:    "10.1.0.0/24 192.168.1.0/24"},
		{name: "gone subnet no longer advertised",
			cur:   "10.1.0.0/24",
			vms:   "10.1.0.0/24",
			gone:  "10.4.0.0/24",
			final: "10.1.0.0/24"},
		{name: "VM moved to another subnet",
			cur:      "10.1.0.0/24",
			vms:      "10.9.0.0/24",
			gone:     "10.1.0.0/24",
			withdraw: "10.1.0.0/24",
			add:      "10.9.0.0/24",
			final:    "10.9.0.0/24"},
		{name: "subnet taken over by a new VM stays",
			cur:   "10.4.0.0/24",
			vms:   "10.4.0.0/24",
			gone:  "10.4.0.0/24",
			final: "10.4.0.0/24"},
		{name: "a covering user route does not count as the VM's",
			cur:   "10.0.0.0/8",
			vms:   "10.1.0.0/24",
			add:   "10.1.0.0/24",
			final: "10.0.0.0/8 10.1.0.0/24"},
		{name: "all VMs removed",
			cur:      "10.1.0.0/24 10.2.0.0/24",
			gone:     "10.1.0.0/24 10.2.0.0/24",
			withdraw: "10.1.0.0/24 10.2.0.0/24",
			final:    ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := prefixes(tt.cur)
			withdraw, add := Changes(cur, prefixes(tt.vms), prefixes(tt.gone))
			if got, want := str(withdraw), tt.withdraw; got != want {
				t.Errorf("withdraw: got %q, want %q", got, want)
			}
			if got, want := str(add), tt.add; got != want {
				t.Errorf("add: got %q, want %q", got, want)
			}
			final := Merge(Merge(cur, nil, withdraw), add, nil)
			if got, want := str(final), tt.final; got != want {
				t.Errorf("advertised after apply: got %q, want %q", got, want)
			}
			// A second apply finds nothing to do.
			w2, a2 := Changes(final, prefixes(tt.vms), prefixes(tt.gone))
			if len(w2) > 0 || len(a2) > 0 {
				t.Errorf("second apply: withdraw %q add %q, want nothing", str(w2), str(a2))
			}
		})
	}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name                   string
		cur, add, remove, want string
	}{
		{"empty", "", "", "", ""},
		{"add keeps order", "192.168.1.0/24", "10.2.0.0/24 10.1.0.0/24", "", "192.168.1.0/24 10.2.0.0/24 10.1.0.0/24"},
		{"no duplicates", "10.1.0.0/24", "10.1.0.0/24", "", "10.1.0.0/24"},
		{"remove", "10.1.0.0/24 192.168.1.0/24", "", "10.1.0.0/24", "192.168.1.0/24"},
		{"remove wins over add", "", "10.1.0.0/24", "10.1.0.0/24", ""},
		{"host bits ignored", "10.1.0.7/24", "10.1.0.0/24", "", "10.1.0.0/24"},
		{"IPv6 user route kept", "fd00::/64", "10.1.0.0/24", "", "fd00::/64 10.1.0.0/24"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Merge(prefixes(tt.cur), prefixes(tt.add), prefixes(tt.remove))
			if !slices.Equal(got, prefixes(tt.want)) && !(len(got) == 0 && tt.want == "") {
				t.Errorf("got %q, want %q", str(got), tt.want)
			}
		})
	}
}
