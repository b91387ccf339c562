package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Policy routing is the second layer of isolation between VMs, beside the
// firewall. The firewall's table can vanish: `nft flush ruleset` (what
// Debian's nftables.service runs on a reload, and what many admins type)
// empties it, and until the watcher (package firewall) hears of it and
// sets the VM ports down, a few milliseconds later, the VMs reach each
// other. Nothing that empties nftables touches routing. Every packet a VM
// sends through the host is first looked up by the program's ip rules,
// for [vm.web] allow = ["vm:db tcp 6379"]:
//
//	5100: iif br-web to 10.6.0.2 lookup main   web's opening to db
//	5100: iif br-db to 10.5.0.2 lookup main    db's replies to web
//	5101: iif br-web lookup 7173741            one for every VM
//	5101: iif br-db lookup 7173741
//	table 7173741: blackhole 10.5.0.0/24, blackhole 10.6.0.0/24, ...   every VM subnet
//
// What the table does not hold (the internet, the tailnet, the LAN) falls
// through to the host's own rules and tables: the main table's default
// route, tailscaled's table 52 for replies to tailnet clients. The table
// holds no default route of its own to keep up with the uplink's. IPv6
// has the same, as twins: a rule per VM (ip -6 rule), a blackhole for
// every VM's /64, rules for each opening's pair to their IPv6 addresses.
//
// What it guarantees: two VMs without an opening between them, in either
// direction, exchange no packet at all, whatever state the firewall is in.
// What it does not: routing cannot see conntrack, so a pair with an
// opening has routes both ways (the replies need one) for every protocol
// and port; which side opens, with what protocol and to which port, is the
// firewall's to judge, and only the firewall's. Nor does it keep VMs from
// the host's own addresses (each VM's gateway is a local address, routed
// by the local table before any rule of the program), the LAN or a
// cloud's metadata server: there the firewall is alone, and the watcher
// closes the VM ports when its table is gone.
//
// The rules and routes carry the protocol config.RouteProto, and the
// routes live in the program's own table: nothing else is touched. The
// rules come before tailscaled's (5210-5270), so that a subnet route a
// tailnet peer advertises never takes a VM subnet from them. The kernel
// walks rules in order for every packet it routes: one per VM, and two per
// pair with an opening (bench packet measures what that costs at 250 VMs).

// Rule is one of the program's ip rules: packets that come in through IIF,
// bound for To when it is set, are looked up in Table. IPv6 rules are
// apart from IPv4's (ip -6 rule).
type Rule struct {
	Pref  int
	IIF   string
	To    netip.Prefix // the zero Prefix for every destination
	Table int
	IPv6  bool
}

// ip is the command that lists the rule's family: "ip" or "ip -6".
func (r Rule) ip() string {
	if r.IPv6 {
		return "ip -6"
	}
	return "ip"
}

func (r Rule) args() string {
	s := fmt.Sprintf("priority %d iif %s", r.Pref, r.IIF)
	if r.To.IsValid() {
		s += " to " + r.To.String()
	}
	table := fmt.Sprint(r.Table)
	if r.Table == unix.RT_TABLE_MAIN {
		table = "main"
	}
	return fmt.Sprintf("%s lookup %s protocol %d", s, table, config.RouteProto)
}

func (r Rule) netlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = netlink.FAMILY_V4
	if r.IPv6 {
		nr.Family = netlink.FAMILY_V6
	}
	nr.Priority = r.Pref
	nr.IifName = r.IIF
	nr.Table = r.Table
	nr.Protocol = config.RouteProto
	if r.To.IsValid() {
		nr.Dst = ipNet(r.To)
	}
	return nr
}

// AddRule adds one of the program's ip rules.
type AddRule struct{ Rule Rule }

func (a *AddRule) String() string { return a.Rule.ip() + " rule add " + a.Rule.args() }
func (a *AddRule) Apply() error {
	if err := ignoreExist(newRule(a.Rule)); err != nil {
		return fmt.Errorf("adding %s rule %s: %w", a.Rule.ip(), a.Rule.args(), err)
	}
	return nil
}

// DelRule deletes one of the program's ip rules.
type DelRule struct{ Rule Rule }

func (a *DelRule) String() string { return a.Rule.ip() + " rule del " + a.Rule.args() }
func (a *DelRule) Apply() error {
	if err := netlink.RuleDel(a.Rule.netlink()); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting %s rule %s: %w", a.Rule.ip(), a.Rule.args(), err)
	}
	return nil
}

// AddBlackhole sets the route for Dst in the program's table to a
// blackhole: VMs' packets to Dst are dropped.
type AddBlackhole struct{ Dst netip.Prefix }

func (a *AddBlackhole) String() string {
	return fmt.Sprintf("ip route replace blackhole %s table %d proto %d", a.Dst, config.RouteTable, config.RouteProto)
}

func (a *AddBlackhole) Apply() error {
	if err := replaceBlackhole(a.Dst); err != nil {
		return fmt.Errorf("adding blackhole route %s to table %d: %w", a.Dst, config.RouteTable, err)
	}
	return nil
}

// DelBlackhole removes the blackhole route for Dst from the program's
// table.
type DelBlackhole struct{ Dst netip.Prefix }

func (a *DelBlackhole) String() string {
	return fmt.Sprintf("ip route del blackhole %s table %d proto %d", a.Dst, config.RouteTable, config.RouteProto)
}

func (a *DelBlackhole) Apply() error {
	if err := netlink.RouteDel(blackhole(a.Dst)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting blackhole route %s from table %d: %w", a.Dst, config.RouteTable, err)
	}
	return nil
}

func blackhole(dst netip.Prefix) *netlink.Route {
	family := netlink.FAMILY_V4
	if dst.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Route{Family: family, Dst: ipNet(dst), Table: config.RouteTable, Type: unix.RTN_BLACKHOLE, Protocol: config.RouteProto}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// routing is the program's part of the host's policy routing.
type routing struct {
	rules      []Rule
	blackholes []netip.Prefix
}

// wantRouting is the routing the model wants: the openings' rules (both
// ways), a rule for every VM, and a blackhole for every VM subnet; each
// for IPv6 too where the VMs have it.
func wantRouting(in *config.Infra) routing {
	var w routing
	seen := map[Rule]bool{}
	for _, vm := range in.VMs {
		for _, a := range vm.Allow {
			peer, ok := in.VM(a.VM)
			if a.VM == "" || !ok {
				continue
			}
			rules := []Rule{
				{config.RulePrefOpenings, vm.Bridge, netip.PrefixFrom(peer.Addr, 32), unix.RT_TABLE_MAIN, false},
				{config.RulePrefOpenings, peer.Bridge, netip.PrefixFrom(vm.Addr, 32), unix.RT_TABLE_MAIN, false},
			}
			if vm.HasIPv6() && peer.HasIPv6() {
				rules = append(rules,
					Rule{config.RulePrefOpenings, vm.Bridge, netip.PrefixFrom(peer.Addr6, 128), unix.RT_TABLE_MAIN, true},
					Rule{config.RulePrefOpenings, peer.Bridge, netip.PrefixFrom(vm.Addr6, 128), unix.RT_TABLE_MAIN, true})
			}
			for _, r := range rules {
				if !seen[r] {
					seen[r] = true
					w.rules = append(w.rules, r)
				}
			}
		}
	}
	for _, vm := range in.VMs {
		w.rules = append(w.rules, Rule{config.RulePrefIsolation, vm.Bridge, netip.Prefix{}, config.RouteTable, false})
		w.blackholes = append(w.blackholes, vm.Subnet)
		if vm.HasIPv6() {
			w.rules = append(w.rules, Rule{config.RulePrefIsolation, vm.Bridge, netip.Prefix{}, config.RouteTable, true})
			w.blackholes = append(w.blackholes, vm.Subnet6)
		}
	}
	return w
}

// readRouting reads the program's rules and routes, and describes any
// route in its table that is not its own.
func readRouting() (routing, []string, error) {
	rules, err := dump(func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return routing{}, nil, fmt.Errorf("listing ip rules: %w", err)
	}
	routes, err := dump(listRoutes)
	if err != nil {
		return routing{}, nil, fmt.Errorf("listing the routes of table %d: %w", config.RouteTable, err)
	}
	have, foreign := routingOf(rules, routes)
	return have, foreign, nil
}

// routingOf picks the program's rules and routes out of rules and routes,
// and describes any route in its table that is not its own.
func routingOf(rules []netlink.Rule, routes []route) (have routing, foreign []string) {
	for _, r := range rules {
		if r.Protocol != config.RouteProto {
			continue
		}
		rule := Rule{Pref: r.Priority, IIF: r.IifName, Table: r.Table, IPv6: r.Family == netlink.FAMILY_V6}
		if r.Dst != nil {
			rule.To = prefixOf(r.Dst)
		}
		have.rules = append(have.rules, rule)
	}
	for _, r := range routes {
		if r.table != config.RouteTable {
			continue
		}
		if r.typ == unix.RTN_BLACKHOLE && r.proto == config.RouteProto {
			have.blackholes = append(have.blackholes, r.dst)
			continue
		}
		foreign = append(foreign, r.String())
	}
	return have, foreign
}

// routingDiff returns what makes have the routing in want: Cleanup deletes
// what is not wanted (rules first, then routes), Setup adds what is
// missing (routes first, so that a VM's rule never finds its table
// incomplete; then rules, in want's order: openings before isolation).
func routingDiff(want, have routing) (cleanup, setup []action.Action) {
	for _, r := range have.rules {
		if !slices.Contains(want.rules, r) {
			cleanup = append(cleanup, &DelRule{r})
		}
	}
	for _, p := range have.blackholes {
		if !slices.Contains(want.blackholes, p) {
			cleanup = append(cleanup, &DelBlackhole{p})
		}
	}
	for _, p := range want.blackholes {
		if !slices.Contains(have.blackholes, p) {
			setup = append(setup, &AddBlackhole{p})
		}
	}
	for _, r := range want.rules {
		if !slices.Contains(have.rules, r) {
			setup = append(setup, &AddRule{r})
		}
	}
	return cleanup, setup
}

// vmRouting is what vm needs of routing to start: every VM subnet's
// blackhole, and its own rule to them. Its openings' rules are not needed:
// without them, the opening is closed.
func vmRouting(in *config.Infra, vm *config.VM, have routing) []action.Action {
	want := wantRouting(in)
	want.rules = slices.DeleteFunc(want.rules, func(r Rule) bool { return r.IIF != vm.Bridge || r.Table != config.RouteTable })
	_, setup := routingDiff(want, have)
	return setup
}

// checkRouting refuses a table of the program's that holds routes it did
// not make: one could open a VM subnet to the VMs.
// foreign lists those routes (readRouting).
func checkRouting(foreign []string) error {
	if len(foreign) > 0 {
		return fmt.Errorf("routing table %d, which microvm owns (a blackhole route for each VM subnet), holds routes it did not make: %s; delete them (ip route flush table %d) and apply again, which makes its own", config.RouteTable, strings.Join(foreign, "; "), config.RouteTable)
	}
	return nil
}

// Routing writes the rules and routes of the model as the commands that
// make them, for plan -v.
func Routing(in *config.Infra) string {
	w := wantRouting(in)
	var b strings.Builder
	for _, p := range w.blackholes {
		fmt.Fprintln(&b, (&AddBlackhole{p}).String())
	}
	for _, r := range w.rules {
		fmt.Fprintln(&b, (&AddRule{r}).String())
	}
	return b.String()
}
