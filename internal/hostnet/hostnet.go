// Package hostnet plans and applies the host's side of the VM networks: one
// bridge per VM holding the VM's gateway address, one TAP per VM on it
// (owned by the VM's own user, which it also makes), IPv4 forwarding, and
// policy routing that keeps the VMs apart even without the firewall
// (routing.go). It reads the host through netlink and changes only links
// it created, which it marks with an alias ("microvm:NAME"), and rules and
// routes it marks with its own protocol: a link with a name the model
// derives that is not the program's is an error at plan, and nothing is
// changed.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// ForwardSysctl is the switch that lets the host route VM traffic;
// Forward6Sysctl is IPv6's.
const (
	ForwardSysctl  = "net.ipv4.ip_forward"
	Forward6Sysctl = "net.ipv6.conf.all.forwarding"
)

// acceptRASysctl is the uplink's switch for router advertisements: Linux
// ignores them once IPv6 forwarding is on, unless it is 2.
func acceptRASysctl(uplink string) string { return "net.ipv6.conf." + uplink + ".accept_ra" }

// Check validates the model against this host before anything is planned:
// the uplink exists; no VM subnet overlaps a network the host already has
// (an address or a route, in any routing table, on any link but the
// program's own); every link with a name a VM needs is the program's; and
// every VM user is. Errors point at the line of infra.toml to change.
func Check(in *config.Infra) error {
	h, err := Observe(in)
	if err != nil {
		return err
	}
	return h.Check(in)
}

// Check validates the model against what Observe read, as the function
// Check says.
func (h *Observed) Check(in *config.Infra) error {
	o := h.o
	if o.link(in.Host.Uplink) == nil {
		return fmt.Errorf("%s: uplink %q does not exist on this host; set [host] uplink to the interface of your default route (%s)", in.Pos("host.uplink"), in.Host.Uplink, defaultRouteLinks())
	}
	if in.Host.IPv6 {
		if err := checkIPv6(in); err != nil {
			return err
		}
	}
	for _, vm := range in.VMs {
		for _, n := range o.nets {
			if n.prefix.Overlaps(vm.Subnet) {
				return fmt.Errorf("%s: vm.%s.subnet %s overlaps %s, a network this host already has (%s); choose another range", in.Pos("vm."+vm.Name+".subnet"), vm.Name, vm.Subnet, n.prefix, n.what)
			}
			if vm.HasIPv6() && n.prefix.Overlaps(vm.Subnet6) {
				key := "host.ipv6_prefix"
				if in.Pos(key) == in.File { // derived: the subnet decides
					key = "vm." + vm.Name + ".subnet"
				}
				return fmt.Errorf("%s: vm.%s's IPv6 subnet %s overlaps %s, a network this host already has (%s); set another ipv6_prefix in [host], or ipv6 = false", in.Pos(key), vm.Name, vm.Subnet6, n.prefix, n.what)
			}
		}
		for _, want := range []struct{ name, kind string }{{vm.Bridge, "bridge"}, {vm.TAP, "tuntap"}} {
			l := o.link(want.name)
			if l == nil {
				continue
			}
			if l.Type() != want.kind {
				return fmt.Errorf("%s: vm.%s needs the interface name %s, but a %s link of that name exists; delete it (ip link del %s) or rename the VM", in.Pos("vm."+vm.Name), vm.Name, want.name, l.Type(), want.name)
			}
			if !owned(&vm, l, o.user(vm.User)) {
				return fmt.Errorf("%s: vm.%s needs the interface name %s, but %s exists and was not made by microvm (its alias is %q, not %q); the program changes only its own links: rename the VM, or rename or delete that interface if it is not in use", in.Pos("vm."+vm.Name), vm.Name, want.name, want.name, l.Attrs().Alias, vm.Alias())
			}
		}
	}
	if err := checkUsers(in, o); err != nil {
		return err
	}
	if err := checkRouting(o.foreign); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("/dev/net/tun is missing: load the tun module (modprobe tun)")
	}
	return nil
}

// owned reports whether l, a link with one of vm's names, is the
// program's: it has vm's alias, or no alias yet and the mark its creation
// leaves (see AddBridge and AddTAP), which an apply interrupted before the
// alias leaves behind. id is vm's user's ids (nil if it has none).
func owned(vm *config.VM, l netlink.Link, id *IDs) bool {
	switch alias := l.Attrs().Alias; {
	case alias == vm.Alias():
		return true
	case alias != "":
		return false
	}
	if t, ok := l.(*netlink.Tuntap); ok {
		return id != nil && t.Owner == id.UID && !t.NonPersist
	}
	return l.Type() == "bridge" && l.Attrs().Group == config.LinkGroup
}

// network is a network the host has, and where.
type network struct {
	prefix netip.Prefix
	what   string // "address 10.2.0.5/16 on eth0", "route 172.17.0.0/16 via docker0"
}

// checkIPv6 makes sure the host can give the VMs IPv6.
func checkIPv6(in *config.Infra) error {
	v, err := readSysctl("net.ipv6.conf.all.disable_ipv6")
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: this host's kernel has no IPv6 (/proc/sys/net/ipv6 is missing); set ipv6 = false in [host]", in.Pos("host.ipv6"))
	case err != nil:
		return err
	case v == "1":
		return fmt.Errorf("%s: IPv6 is disabled on this host (net.ipv6.conf.all.disable_ipv6 = 1); turn it on, or set ipv6 = false in [host]", in.Pos("host.ipv6"))
	}
	return nil
}

// networksOf lists the IPv4 networks of this host's addresses and routes
// (every table, so policy routing and tailscaled's table count too), and
// with ipv6 the IPv6 ones (but link-local and multicast), except those of
// the program's own links and table, which it manages, and default routes,
// which overlap everything.
func networksOf(links []netlink.Link, addrs []netlink.Addr, routes []route, ipv6 bool) []network {
	names := map[int]string{}
	ours := map[int]bool{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		ours[a.Index] = strings.HasPrefix(a.Alias, config.AliasPrefix)
	}
	var out []network
	for _, a := range addrs {
		if p := prefixOf(a.IPNet); !ours[a.LinkIndex] && !special6(p) && (ipv6 || p.Addr().Is4()) {
			out = append(out, network{p.Masked(), fmt.Sprintf("address %s on %s", p, names[a.LinkIndex])})
		}
	}
	for _, r := range routes {
		if ours[r.link] || r.table == config.RouteTable {
			continue
		}
		p := r.dst.Masked()
		if p.Bits() == 0 || special6(p) || p.Addr().Is6() && (!ipv6 || r.typ != unix.RTN_UNICAST) {
			// IPv6's local table has a route for each address (its
			// own, above) and for multicast, on every link.
			continue
		}
		where := "a route"
		if name, ok := names[r.link]; ok {
			where = "a route via " + name
		}
		if r.table != unix.RT_TABLE_MAIN && r.table != unix.RT_TABLE_LOCAL {
			where += fmt.Sprintf(" in table %d", r.table)
		}
		out = append(out, network{p, where + " to " + p.String()})
	}
	return out
}

// UplinkNetworks are the IPv4 and IPv6 networks reached directly through
// the uplink: those of its addresses and of the routes out of it (but the
// default route, link-local and multicast), in the main table. VMs reach
// none of them unless an allow list says so (package firewall).
func UplinkNetworks(uplink string) ([]netip.Prefix, error) {
	i, err := index(uplink)
	if err != nil {
		return nil, fmt.Errorf("finding uplink %s: %w", uplink, err)
	}
	var out []netip.Prefix
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("reading addresses of %s: %w", uplink, err)
	}
	for _, a := range addrs {
		if p := prefixOf(a.IPNet).Masked(); a.LinkIndex == i && !special6(p) {
			out = append(out, p)
		}
	}
	routes, err := dump(func() ([]route, error) { return routesOf(unix.RT_TABLE_MAIN, i) })
	if err != nil {
		return nil, fmt.Errorf("reading routes of %s: %w", uplink, err)
	}
	for _, r := range routes {
		// The kernel filtered them, and they are checked again.
		if p := r.dst.Masked(); r.link == i && r.table == unix.RT_TABLE_MAIN && p.Bits() > 0 && !special6(p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// special6 reports IPv6 link-local and multicast networks, which every
// link has and no VM reaches anyway (the firewall blocks them as
// special).
func special6(p netip.Prefix) bool {
	return p.Addr().Is6() && (p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast())
}

// prefixOf converts an interface address such as 10.1.0.1/24 or
// fd00::1/64, keeping the host part.
func prefixOf(n *net.IPNet) netip.Prefix {
	// netlink gives 4 or 16 bytes: ok is always true.
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
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
