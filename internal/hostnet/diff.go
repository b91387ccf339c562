package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// observed is what Check and Diff read of the host, each kind of state
// once (one dump of the links, one of the addresses, one of the routes
// and one of the rules, /etc/passwd and /etc/group once), before anything
// is decided: at 250 VMs, a read per VM is most of what a plan costs.
type observed struct {
	links    []netlink.Link
	byName   map[string]netlink.Link   // links by name, made from links on first use
	addrs    map[string][]netip.Prefix // the addresses of each VM bridge there is, but IPv6 link-local ones
	forward  string                    // the value of ForwardSysctl
	forward6 string                    // of Forward6Sysctl, with IPv6
	acceptRA string                    // of the uplink's accept_ra, with IPv6
	users    map[string]IDs            // the VMs' users that exist
	comments map[string]string         // their comments (GECOS), which mark the program's
	kvm      *uint32                   // the kvm group's id; nil when the host has none
	routing  routing                   // the program's ip rules and blackhole routes
	foreign  []string                  // routes in the program's table that are not its own
	nets     []network                 // the networks of the host's addresses and routes, but the program's
}

func (o *observed) link(name string) netlink.Link {
	if o.byName == nil {
		o.byName = make(map[string]netlink.Link, len(o.links))
		for _, l := range o.links {
			o.byName[l.Attrs().Name] = l
		}
	}
	return o.byName[name]
}

func (o *observed) user(name string) *IDs {
	if id, ok := o.users[name]; ok {
		return &id
	}
	return nil
}

// Observed is what a plan reads of the host's links, addresses, routes,
// rules, sysctls and VM users: Observe reads it once, Check validates the
// model against it and Diff decides from it, without reading again.
type Observed struct{ o *observed }

// Observe reads what Check and Diff need of the host.
func Observe(in *config.Infra) (*Observed, error) {
	links, err := dump(listLinks)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	o := &observed{links: links}
	if o.forward, err = readSysctl(ForwardSysctl); err != nil {
		return nil, err
	}
	if in.Host.IPv6 {
		if o.forward6, err = readSysctl(Forward6Sysctl); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err // a host without IPv6 is Check's to explain
		}
		// An uplink without IPv6 settings (no such link yet) takes none.
		o.acceptRA, _ = readSysctl(acceptRASysctl(in.Host.Uplink))
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	routes, err := dump(listRoutes)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	rules, err := dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("listing ip rules: %w", err)
	}
	o.routing, o.foreign = routingOf(rules, routes)
	o.nets = networksOf(links, addrs, routes, in.Host.IPv6)
	if err := o.readVMs(addrs, in.VMs...); err != nil {
		return nil, err
	}
	return &Observed{o}, nil
}

// Diff returns what brings the host's links, users, policy routing and
// sysctls to the model, from what Observe read.
func (h *Observed) Diff(in *config.Infra) action.Diff { return diff(in, h.o) }

// Diff returns what brings the host's links, users, policy routing and
// sysctls to the model. Cleanup deletes the links of VMs no longer in the
// file, then the rules and routes the model no longer wants; Setup makes
// the VMs' users, the routing (routing.go) before forwarding and the
// links, so no VM network is ever up without it, then turns on forwarding
// and makes each VM's bridge and TAP. The caller loads the firewall before
// Setup.
func Diff(in *config.Infra) (action.Diff, error) {
	if in.Host.IPv6 {
		if err := checkIPv6(in); err != nil { // Check's, when it runs first
			return action.Diff{}, err
		}
	}
	h, err := Observe(in)
	if err != nil {
		return action.Diff{}, err
	}
	return h.Diff(in), nil
}

// readVMs reads what vms have on the host: their users and their bridges'
// addresses, taken from addrs, every address of the host.
func (o *observed) readVMs(addrs []netlink.Addr, vms ...config.VM) error {
	o.addrs = map[string][]netip.Prefix{}
	names := make([]string, len(vms))
	for i, vm := range vms {
		names[i] = vm.User
	}
	db, err := readUsers(names)
	if err != nil {
		return err
	}
	o.users, o.comments, o.kvm = db.ids, db.comments, db.kvm
	bridges := map[int]string{}
	for _, vm := range vms {
		if l := o.link(vm.Bridge); l != nil {
			bridges[l.Attrs().Index] = vm.Bridge
		}
	}
	for _, a := range addrs {
		name, ok := bridges[a.LinkIndex]
		// The kernel gives the bridge its link-local address.
		if p := prefixOf(a.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
			o.addrs[name] = append(o.addrs[name], p)
		}
	}
	return nil
}

// DepartedSubnets lists the subnets of the bridges the program made for
// VMs that are no longer in the model (their gateway addresses, masked):
// the routes package tailscale withdraws, read before the links go.
func DepartedSubnets(in *config.Infra) ([]netip.Prefix, error) {
	links, err := dump(listLinks)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []netip.Prefix
	for _, l := range links {
		if !departed(in, l) {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("reading addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if p := prefixOf(a.IPNet); !p.Addr().IsLinkLocalUnicast() {
				out = append(out, p.Masked())
			}
		}
	}
	return out, nil
}

// departed reports whether l is a link the program made for a VM that is
// no longer in the model, or not under that name.
func departed(in *config.Infra, l netlink.Link) bool {
	a := l.Attrs()
	name, ok := strings.CutPrefix(a.Alias, config.AliasPrefix)
	if !ok {
		return false
	}
	vm, ok := in.VM(name)
	return !ok || a.Name != vm.Bridge && a.Name != vm.TAP
}

// diff compares the model with what was read of the host.
func diff(in *config.Infra, o *observed) action.Diff {
	var d action.Diff
	// Links this program made for VMs that are no longer in the file: TAPs
	// before bridges, so a bridge is never deleted under a port.
	var bridges []action.Action
	for _, l := range o.links {
		if !departed(in, l) {
			continue
		}
		del := &DelLink{Name: l.Attrs().Name}
		if l.Type() == "tuntap" {
			d.Cleanup = append(d.Cleanup, del)
		} else {
			bridges = append(bridges, del)
		}
	}
	d.Cleanup = append(d.Cleanup, bridges...)
	routesGone, routesNew := routingDiff(wantRouting(in), o.routing)
	d.Cleanup = append(d.Cleanup, routesGone...)

	// Users first: a TAP is made for its owner.
	for i := range in.VMs {
		vm := &in.VMs[i]
		switch id := o.user(vm.User); {
		case id == nil:
			d.Setup = append(d.Setup, newUser(vm, o.kvm != nil))
		case o.kvm != nil && !slices.Contains(id.Groups, *o.kvm):
			d.Setup = append(d.Setup, &AddToGroup{User: vm.User, Group: KVMGroup})
		}
	}
	d.Setup = append(d.Setup, routesNew...)
	if o.forward != "1" {
		d.Setup = append(d.Setup, &Sysctl{Key: ForwardSysctl, Value: "1"})
	}
	if in.Host.IPv6 && o.forward6 != "1" {
		if o.acceptRA == "1" {
			// The uplink takes its IPv6 route from router advertisements,
			// which Linux stops taking once it forwards: 2 keeps them.
			d.Setup = append(d.Setup, &Sysctl{Key: acceptRASysctl(in.Host.Uplink), Value: "2",
				Why: "keep taking router advertisements on the uplink once IPv6 forwarding is on"})
		}
		d.Setup = append(d.Setup, &Sysctl{Key: Forward6Sysctl, Value: "1"})
	}
	for i := range in.VMs {
		d.Setup = append(d.Setup, vmDiff(&in.VMs[i], o)...)
	}
	return d
}

// vmDiff returns what vm's bridge and TAP lack.
func vmDiff(vm *config.VM, o *observed) []action.Action {
	bridge := o.link(vm.Bridge)
	return append(bridgeDiff(vm, bridge, o.addrs[vm.Bridge]), tapDiff(vm, o.link(vm.TAP), bridge, o.user(vm.User))...)
}

// bridgeDiff returns what vm's bridge l (nil if missing), holding the
// addresses addrs (but IPv6 link-local ones), lacks: the gateway's IPv4
// address, and its IPv6 one if the VM has IPv6.
func bridgeDiff(vm *config.VM, l netlink.Link, addrs []netip.Prefix) []action.Action {
	var acts []action.Action
	gws := []netip.Prefix{netip.PrefixFrom(vm.Gateway, vm.Subnet.Bits())}
	if vm.HasIPv6() {
		gws = append(gws, netip.PrefixFrom(vm.Gateway6, vm.Subnet6.Bits()))
	}
	if l == nil {
		acts = append(acts, &AddBridge{Name: vm.Bridge, Alias: vm.Alias()})
		for _, gw := range gws {
			acts = append(acts, &AddAddr{Link: vm.Bridge, Prefix: gw})
		}
		return append(acts, &LinkUp{Name: vm.Bridge})
	}
	if l.Attrs().Alias != vm.Alias() {
		// Made by an apply interrupted before the alias (Check proved
		// it is the program's): AddBridge finishes it.
		acts = append(acts, &AddBridge{Name: vm.Bridge, Alias: vm.Alias()})
	}
	for _, p := range addrs {
		if !slices.Contains(gws, p) {
			acts = append(acts, &DelAddr{Link: vm.Bridge, Prefix: p})
		}
	}
	for _, gw := range gws {
		if !slices.Contains(addrs, gw) {
			acts = append(acts, &AddAddr{Link: vm.Bridge, Prefix: gw})
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		acts = append(acts, &LinkUp{Name: vm.Bridge})
	}
	return acts
}

// tapDiff returns what vm's TAP l (nil if missing) lacks, with bridge
// the link it belongs on and owner the ids of vm's user (nil if there is
// none yet).
func tapDiff(vm *config.VM, l, bridge netlink.Link, owner *IDs) []action.Action {
	want := &AddTAP{Name: vm.TAP, User: vm.User, MultiQueue: vm.VCPU > 1, Alias: vm.Alias(), Master: vm.Bridge}
	if l == nil {
		return []action.Action{want}
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok || !want.matches(tap, owner) {
		// Owner and queue mode are fixed when a TAP is made: recreate it.
		return []action.Action{&DelLink{Name: vm.TAP}, want}
	}
	if l.Attrs().Alias != vm.Alias() {
		return []action.Action{want} // finishes a TAP an interrupted apply made
	}
	var acts []action.Action
	if bridge == nil || l.Attrs().MasterIndex != bridge.Attrs().Index {
		acts = append(acts, &SetMaster{Name: vm.TAP, Master: vm.Bridge})
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		acts = append(acts, &LinkUp{Name: vm.TAP})
	}
	return acts
}
