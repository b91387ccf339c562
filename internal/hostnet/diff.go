package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// observed is what Diff reads of the host before it decides anything.
type observed struct {
	links   []netlink.Link
	addrs   map[string][]netip.Prefix // the IPv4 addresses of each VM bridge there is
	forward string                    // the value of ForwardSysctl
	users   map[string]IDs            // the VMs' users that exist
	kvm     *uint32                   // the kvm group's id; nil when the host has none
	routing routing                   // the program's ip rules and blackhole routes
}

func (o *observed) link(name string) netlink.Link {
	for _, l := range o.links {
		if l.Attrs().Name == name {
			return l
		}
	}
	return nil
}

func (o *observed) user(name string) *IDs {
	if id, ok := o.users[name]; ok {
		return &id
	}
	return nil
}

// Diff returns what brings the host's links, users, policy routing and
// sysctls to the model. Cleanup deletes the links of VMs no longer in the
// file, then the rules and routes the model no longer wants; Setup makes
// the VMs' users, the routing (routing.go) before forwarding and the
// links, so no VM network is ever up without it, then turns on forwarding
// and makes each VM's bridge and TAP. The caller loads the firewall before
// Setup.
func Diff(in *config.Infra) (action.Diff, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return action.Diff{}, fmt.Errorf("listing links: %w", err)
	}
	o := &observed{links: links}
	if o.forward, err = readSysctl(ForwardSysctl); err != nil {
		return action.Diff{}, err
	}
	if err := o.readVMs(in.VMs...); err != nil {
		return action.Diff{}, err
	}
	if o.routing, _, err = readRouting(); err != nil {
		return action.Diff{}, err
	}
	return diff(in, o), nil
}

// readVMs reads what vms have on the host: their users and their bridges'
// addresses.
func (o *observed) readVMs(vms ...config.VM) error {
	o.addrs, o.users = map[string][]netip.Prefix{}, map[string]IDs{}
	if g, err := user.LookupGroup(KVMGroup); err == nil {
		// A group id that is not a number is no group the kernel knows.
		if id, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			kvm := uint32(id)
			o.kvm = &kvm
		}
	}
	for _, vm := range vms {
		// A user that cannot be read is planned as missing: AddUser
		// then finds it, and checks its mark, when it is applied.
		if id, err := LookupIDs(vm.User); err == nil {
			o.users[vm.User] = id
		}
		bridge := o.link(vm.Bridge)
		if bridge == nil {
			continue
		}
		list, err := netlink.AddrList(bridge, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("listing the addresses of %s: %w", vm.Bridge, err)
		}
		for _, a := range list {
			o.addrs[vm.Bridge] = append(o.addrs[vm.Bridge], prefixOf(a.IPNet))
		}
	}
	return nil
}

// DepartedSubnets lists the subnets of the bridges the program made for
// VMs that are no longer in the model (their gateway addresses, masked):
// the routes package tailscale withdraws, read before the links go.
func DepartedSubnets(in *config.Infra) ([]netip.Prefix, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []netip.Prefix
	for _, l := range links {
		if !departed(in, l) {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("reading addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			out = append(out, prefixOf(a.IPNet).Masked())
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

// bridgeDiff returns what vm's bridge l (nil if missing), holding the IPv4
// addresses addrs, lacks.
func bridgeDiff(vm *config.VM, l netlink.Link, addrs []netip.Prefix) []action.Action {
	var acts []action.Action
	gw := netip.PrefixFrom(vm.Gateway, vm.Subnet.Bits())
	if l == nil {
		return []action.Action{
			&AddBridge{Name: vm.Bridge, Alias: vm.Alias()},
			&AddAddr{Link: vm.Bridge, Prefix: gw},
			&LinkUp{Name: vm.Bridge},
		}
	}
	if l.Attrs().Alias != vm.Alias() {
		// Made by an apply interrupted before the alias (Check proved
		// it is the program's): AddBridge finishes it.
		acts = append(acts, &AddBridge{Name: vm.Bridge, Alias: vm.Alias()})
	}
	have := false
	for _, p := range addrs {
		if p == gw {
			have = true
			continue
		}
		acts = append(acts, &DelAddr{Link: vm.Bridge, Prefix: p})
	}
	if !have {
		acts = append(acts, &AddAddr{Link: vm.Bridge, Prefix: gw})
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
	want := &AddTAP{Name: vm.TAP, User: vm.User, MultiQueue: vm.VCPU > 1, Alias: vm.Alias()}
	all := []action.Action{want, &SetMaster{Name: vm.TAP, Master: vm.Bridge}, &LinkUp{Name: vm.TAP}}
	if l == nil {
		return all
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok || !want.matches(tap, owner) {
		// Owner and queue mode are fixed when a TAP is made: recreate it.
		return append([]action.Action{&DelLink{Name: vm.TAP}}, all...)
	}
	var acts []action.Action
	if l.Attrs().Alias != vm.Alias() {
		acts = append(acts, want) // finishes a TAP an interrupted apply made
	}
	if bridge == nil || l.Attrs().MasterIndex != bridge.Attrs().Index {
		acts = append(acts, all[1])
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		acts = append(acts, all[2])
	}
	return acts
}
