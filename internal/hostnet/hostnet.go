// Package hostnet plans and applies the host's side of the VM networks: one
// bridge per VM holding the VM's gateway address, one TAP per VM on it (owned
// by the user the VMM runs as), and IPv4 forwarding. It reads the host
// through netlink and changes only links it created, which it marks with an
// alias ("microvm:NAME").
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// ForwardSysctl is the switch that lets the host route VM traffic.
const ForwardSysctl = "net.ipv4.ip_forward"

// Check validates the model against this host before anything is planned:
// the uplink exists, and no VM subnet overlaps a network the host already
// has, and no link with a VM's name is of another kind. Errors point at the
// line of infra.toml to change.
func Check(in *config.Infra) error {
	up, err := netlink.LinkByName(in.Host.Uplink)
	if err != nil {
		return fmt.Errorf("%s: uplink %q does not exist on this host; set [host] uplink to the interface of your default route (%s)", in.Pos("host.uplink"), in.Host.Uplink, defaultRouteLinks())
	}
	addrs, err := netlink.AddrList(up, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("reading addresses of %s: %w", in.Host.Uplink, err)
	}
	for _, vm := range in.VMs {
		for _, a := range addrs {
			p := prefixOf(a.IPNet).Masked()
			if p.Overlaps(vm.Subnet) {
				return fmt.Errorf("%s: vm.%s.subnet %s overlaps the uplink's own network %s (on %s); choose another range", in.Pos("vm."+vm.Name+".subnet"), vm.Name, vm.Subnet, p, in.Host.Uplink)
			}
		}
		for _, want := range []struct{ name, kind string }{{vm.Bridge, "bridge"}, {vm.TAP, "tuntap"}} {
			l, err := netlink.LinkByName(want.name)
			if err == nil && l.Type() != want.kind {
				return fmt.Errorf("%s: vm.%s needs the interface name %s, but a %s link of that name exists; delete it (ip link del %s) or rename the VM", in.Pos("vm."+vm.Name), vm.Name, want.name, l.Type(), want.name)
			}
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("/dev/net/tun is missing: load the tun module (modprobe tun)")
	}
	return nil
}

// Diff returns the actions that bring the host's links and sysctls to the
// model, in two groups: cleanup (the VMM user, links of VMs no longer in the
// file) and setup (forwarding, each VM's bridge and TAP). The caller loads
// the firewall between the two. Nothing returned means the host matches.
func Diff(in *config.Infra) (cleanup, setup []action.Action, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("listing links: %w", err)
	}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	if _, err := user.Lookup(in.Host.User); err != nil {
		cleanup = append(cleanup, &AddUser{Name: in.Host.User})
	}

	// Links this program made for VMs that are no longer in the file: TAPs
	// before bridges, so a bridge is never deleted under a port.
	var gone []action.Action
	for _, l := range links {
		a := l.Attrs()
		name, ok := strings.CutPrefix(a.Alias, config.AliasPrefix)
		if !ok {
			continue
		}
		if vm, ok := in.VM(name); ok && (a.Name == vm.Bridge || a.Name == vm.TAP) {
			continue
		}
		del := &DelLink{Name: a.Name}
		if l.Type() == "tuntap" {
			cleanup = append(cleanup, del)
		} else {
			gone = append(gone, del)
		}
	}
	cleanup = append(cleanup, gone...)

	if v, err := readSysctl(ForwardSysctl); err != nil {
		return nil, nil, err
	} else if v != "1" {
		setup = append(setup, &Sysctl{Key: ForwardSysctl, Value: "1"})
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		setup = append(setup, bridgeDiff(vm, byName[vm.Bridge])...)
		setup = append(setup, tapDiff(in.Host.User, vm, byName[vm.TAP], byName[vm.Bridge])...)
	}
	return cleanup, setup, nil
}

func bridgeDiff(vm *config.VM, l netlink.Link) []action.Action {
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
		acts = append(acts, &SetAlias{Name: vm.Bridge, Alias: vm.Alias()})
	}
	addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	have := false
	for _, a := range addrs {
		p := prefixOf(a.IPNet)
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

func tapDiff(owner string, vm *config.VM, l, bridge netlink.Link) []action.Action {
	want := &AddTAP{Name: vm.TAP, User: owner, MultiQueue: vm.VCPU > 1, Alias: vm.Alias()}
	all := []action.Action{want, &SetMaster{Name: vm.TAP, Master: vm.Bridge}, &LinkUp{Name: vm.TAP}}
	if l == nil {
		return all
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok || !want.matches(tap) {
		// Owner and queue mode are fixed when a TAP is made: recreate it.
		return append([]action.Action{&DelLink{Name: vm.TAP}}, all...)
	}
	var acts []action.Action
	if l.Attrs().Alias != vm.Alias() {
		acts = append(acts, &SetAlias{Name: vm.TAP, Alias: vm.Alias()})
	}
	if bridge == nil || l.Attrs().MasterIndex != bridge.Attrs().Index {
		acts = append(acts, all[1])
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		acts = append(acts, all[2])
	}
	return acts
}

// prefixOf converts an interface address such as 10.1.0.1/24, keeping the
// host part.
func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP.To4())
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones)
}

// defaultRouteLinks names the links that carry a default route, as a hint.
func defaultRouteLinks() string {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "see `ip route show default`"
	}
	var names []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				names = append(names, fmt.Sprintf("%q", l.Attrs().Name))
			}
		}
	}
	if len(names) == 0 {
		return "this host has no default route; see `ip route`"
	}
	return "here: " + strings.Join(names, ", ")
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ignoreExist turns "already exists" into success, so a re-run converges.
func ignoreExist(err error) error {
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	return err
}
