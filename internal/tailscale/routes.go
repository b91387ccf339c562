// Package tailscale keeps the routes tailscaled advertises in step with the
// VM subnets of infra.toml, through tailscaled's local API: it is the design's
// step 4 ("tailscale up --advertise-routes=10.1.0.0/24,..."), redone by
// every apply. It also reports whether the tailnet's control server has
// approved each route, which no program on the host can do for the user.
//
// Only the VM subnets are the program's. Routes the user advertises for
// other reasons (a home LAN, an exit node) are kept, and the subnet of a VM
// that left infra.toml is withdrawn. The program knows such a subnet was a
// VM's from the bridge it made for it (alias "microvm:NAME"), which still
// exists when the withdrawal is planned: apply withdraws routes before it
// deletes links.
package tailscale

import (
	"net/netip"
	"slices"
)

// Merge returns the routes to advertise: cur without remove, then add.
// Routes keep their order, added ones come last, and none is listed twice.
// Prefixes are compared by their network (10.1.0.5/24 is 10.1.0.0/24).
func Merge(cur, add, remove []netip.Prefix) []netip.Prefix {
	out := []netip.Prefix{}
	seen := map[netip.Prefix]bool{}
	for _, r := range remove {
		seen[r.Masked()] = true // never re-added below
	}
	for _, list := range [][]netip.Prefix{cur, add} {
		for _, p := range list {
			p = p.Masked()
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// Changes returns what apply must change in the advertised routes cur:
// withdraw the subnets of VMs that are gone, and add the VM subnets that are
// missing. A route the user advertised that equals the subnet of a VM in
// infra.toml is shared: it stays.
func Changes(cur, vms, gone []netip.Prefix) (withdraw, add []netip.Prefix) {
	has := func(list []netip.Prefix, p netip.Prefix) bool {
		return slices.ContainsFunc(list, func(q netip.Prefix) bool { return q.Masked() == p.Masked() })
	}
	for _, p := range cur {
		if has(gone, p) && !has(vms, p) && !has(withdraw, p) {
			withdraw = append(withdraw, p.Masked())
		}
	}
	for _, p := range vms {
		if !has(cur, p) && !has(add, p) {
			add = append(add, p.Masked())
		}
	}
	return withdraw, add
}
