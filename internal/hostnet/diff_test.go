package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// testVM is vm1 of a small model, with vCPUs vcpu; its VMM user is
// microvm-vm1.
func testVM(t *testing.T, vcpu int) *config.VM {
	t.Helper()
	return &model(t, "[vm.vm1]\nsubnet = \"10.1.0.0/24\"\nvcpu = "+strconv.Itoa(vcpu)+"\n").VMs[0]
}

func model(t *testing.T, vms string) *config.Infra {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte("[host]\nuplink = \"eth0\"\n\n"+vms))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func texts(acts []action.Action) []string {
	out := []string{}
	for _, a := range acts {
		out = append(out, a.String())
	}
	return out
}

// The bridge's addresses are compared with the gateway's, from what was
// read of the host: no root, no netlink.
func TestBridgeDiff(t *testing.T) {
	vm := testVM(t, 1)
	gw, gw6 := netip.MustParsePrefix("10.1.0.1/24"), netip.MustParsePrefix("fddc:b7cf:609b:100::1/64")
	addGW6 := "ip addr add fddc:b7cf:609b:100::1/64 dev br-vm1 nodad"
	bridge := func(alias string, up bool) netlink.Link {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: vm.Bridge, Alias: alias}}
		if up {
			b.Flags = net.FlagUp
		}
		return b
	}
	add := "ip link add br-vm1 group 7173741 type bridge && ip link set br-vm1 alias microvm:vm1"
	for _, tt := range []struct {
		name  string
		link  netlink.Link
		addrs []netip.Prefix
		want  []string
	}{
		{"missing", nil, nil, []string{add, "ip addr add 10.1.0.1/24 dev br-vm1", addGW6, "ip link set br-vm1 up"}},
		{"as wanted", bridge(vm.Alias(), true), []netip.Prefix{gw, gw6}, []string{}},
		{"no address", bridge(vm.Alias(), true), nil, []string{"ip addr add 10.1.0.1/24 dev br-vm1", addGW6}},
		{"no IPv6 address", bridge(vm.Alias(), true), []netip.Prefix{gw}, []string{addGW6}},
		{"another address", bridge(vm.Alias(), true), []netip.Prefix{netip.MustParsePrefix("10.1.0.9/24"), gw6},
			[]string{"ip addr del 10.1.0.9/24 dev br-vm1", "ip addr add 10.1.0.1/24 dev br-vm1"}},
		{"another IPv6 address", bridge(vm.Alias(), true), []netip.Prefix{gw, netip.MustParsePrefix("fd00:9::1/64")},
			[]string{"ip addr del fd00:9::1/64 dev br-vm1", addGW6}},
		{"the gateway with another prefix length", bridge(vm.Alias(), true), []netip.Prefix{netip.MustParsePrefix("10.1.0.1/16"), gw6},
			[]string{"ip addr del 10.1.0.1/16 dev br-vm1", "ip addr add 10.1.0.1/24 dev br-vm1"}},
		{"an extra address", bridge(vm.Alias(), true), []netip.Prefix{gw, gw6, netip.MustParsePrefix("192.168.9.1/24")},
			[]string{"ip addr del 192.168.9.1/24 dev br-vm1"}},
		{"down", bridge(vm.Alias(), false), []netip.Prefix{gw, gw6}, []string{"ip link set br-vm1 up"}},
		{"made by an interrupted apply, without its alias", bridge("", true), []netip.Prefix{gw, gw6}, []string{add}},
	} {
		if got := texts(bridgeDiff(vm, tt.link, tt.addrs)); !slices.Equal(got, tt.want) {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

// A TAP whose owner or queue mode differs is made again (both are fixed
// when a TAP is made): a VM given a second vCPU gets a multi-queue TAP.
func TestTAPDiff(t *testing.T) {
	const uid, gid = 990, 990
	owner := &IDs{UID: uid, GID: gid}
	const bridgeIndex = 7
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-vm1", Index: bridgeIndex}}
	tap := func(multi bool, owner int, master int, up bool) netlink.Link {
		flags := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR
		if multi {
			flags |= netlink.TUNTAP_MULTI_QUEUE
		}
		l := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm1", Alias: "microvm:vm1", MasterIndex: master},
			Mode: netlink.TUNTAP_MODE_TAP, Flags: flags, Owner: uint32(owner), Group: uint32(gid)}
		if up {
			l.LinkAttrs.Flags = net.FlagUp
		}
		return l
	}
	unaliased := func(l netlink.Link) netlink.Link { l.Attrs().Alias = ""; return l }
	add := func(multi bool) string {
		s := "ip tuntap add dev vm-vm1 mode tap user microvm-vm1 group microvm-vm1 vnet_hdr"
		if multi {
			s += " multi_queue"
		}
		return s + " && ip link set vm-vm1 alias microvm:vm1 master br-vm1 && ip link set vm-vm1 up"
	}
	master, up, del := "ip link set vm-vm1 master br-vm1", "ip link set vm-vm1 up", "ip link del vm-vm1"
	for _, tt := range []struct {
		name  string
		vcpu  int
		link  netlink.Link
		owner *IDs
		want  []string
	}{
		{"missing", 1, nil, owner, []string{add(false)}},
		{"missing, 2 vCPUs", 2, nil, owner, []string{add(true)}},
		{"as wanted", 1, tap(false, uid, bridgeIndex, true), owner, []string{}},
		{"as wanted, 2 vCPUs", 2, tap(true, uid, bridgeIndex, true), owner, []string{}},
		{"a vCPU added", 2, tap(false, uid, bridgeIndex, true), owner, []string{del, add(true)}},
		{"back to one vCPU", 1, tap(true, uid, bridgeIndex, true), owner, []string{del, add(false)}},
		{"another owner", 1, tap(false, uid+1, bridgeIndex, true), owner, []string{del, add(false)}},
		{"off the bridge", 1, tap(false, uid, 0, true), owner, []string{master}},
		{"down", 1, tap(false, uid, bridgeIndex, false), owner, []string{up}},
		{"made by an interrupted apply, without its alias", 1, unaliased(tap(false, uid, 0, false)), owner, []string{add(false)}},
		{"a bridge of the same name", 1, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm1"}}, owner, []string{del, add(false)}},
		{"its user gone", 1, tap(false, uid, bridgeIndex, true), nil, []string{del, add(false)}},
	} {
		vm := testVM(t, tt.vcpu)
		if got := texts(tapDiff(vm, tt.link, br, tt.owner)); !slices.Equal(got, tt.want) {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

// TestDiff compares a whole model with a host read into a value: links of
// VMs that left the file go (TAPs before bridges), users come before the
// links made for them, and nothing is planned for a link the program did
// not make.
func TestDiff(t *testing.T) {
	in := model(t, "[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n")
	kvm := uint32(108)
	up := net.FlagUp
	br1 := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-vm1", Index: 11, Alias: "microvm:vm1", Flags: up}}
	tap1 := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm1", Alias: "microvm:vm1", MasterIndex: 11, Flags: up},
		Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: 990, Group: 990}
	br2 := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-vm2", Index: 12, Alias: "microvm:vm2", Flags: up}}
	tap2 := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm2", Alias: "microvm:vm2", MasterIndex: 12, Flags: up},
		Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: 991, Group: 991}
	oldBr := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-old", Alias: "microvm:old"}}
	oldTap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-old", Alias: "microvm:old"}}
	foreign := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0", Alias: "docker"}}
	eth0 := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}
	gw := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, a := range s {
			out = append(out, netip.MustParsePrefix(a))
		}
		return out
	}
	applied := func() *observed {
		return &observed{
			links:    []netlink.Link{eth0, foreign, br1, tap1, br2, tap2},
			addrs:    map[string][]netip.Prefix{"br-vm1": gw("10.1.0.1/24", "fddc:b7cf:609b:100::1/64"), "br-vm2": gw("10.2.0.1/24", "fddc:b7cf:609b:200::1/64")},
			forward:  "1",
			forward6: "1",
			acceptRA: "1",
			users:    map[string]IDs{"microvm-vm1": {UID: 990, GID: 990, Groups: []uint32{kvm}}, "microvm-vm2": {UID: 991, GID: 991, Groups: []uint32{kvm}}},
			kvm:      &kvm,
			routing: routing{
				rules: []Rule{{5101, "br-vm1", netip.Prefix{}, 0x6d766d, false}, {5101, "br-vm1", netip.Prefix{}, 0x6d766d, true},
					{5101, "br-vm2", netip.Prefix{}, 0x6d766d, false}, {5101, "br-vm2", netip.Prefix{}, 0x6d766d, true}},
				blackholes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fddc:b7cf:609b:100::/64"),
					netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fddc:b7cf:609b:200::/64")},
			},
		}
	}
	useradd := func(name, vm string, kvm bool) string {
		a := &AddUser{Name: name, Comment: UserComment(vm)}
		if kvm {
			a.Groups = []string{KVMGroup}
		}
		return a.String()
	}
	const (
		vm1Blackhole  = "ip route replace blackhole 10.1.0.0/24 table 7173741 proto 109"
		vm2Blackhole  = "ip route replace blackhole 10.2.0.0/24 table 7173741 proto 109"
		vm1Rule       = "ip rule add priority 5101 iif br-vm1 lookup 7173741 protocol 109"
		vm2Rule       = "ip rule add priority 5101 iif br-vm2 lookup 7173741 protocol 109"
		vm1Blackhole6 = "ip route replace blackhole fddc:b7cf:609b:100::/64 table 7173741 proto 109"
		vm2Blackhole6 = "ip route replace blackhole fddc:b7cf:609b:200::/64 table 7173741 proto 109"
		vm1Rule6      = "ip -6 rule add priority 5101 iif br-vm1 lookup 7173741 protocol 109"
		vm2Rule6      = "ip -6 rule add priority 5101 iif br-vm2 lookup 7173741 protocol 109"
	)
	vm2Links := []string{
		"ip link add br-vm2 group 7173741 type bridge && ip link set br-vm2 alias microvm:vm2",
		"ip addr add 10.2.0.1/24 dev br-vm2",
		"ip addr add fddc:b7cf:609b:200::1/64 dev br-vm2 nodad",
		"ip link set br-vm2 up",
		"ip tuntap add dev vm-vm2 mode tap user microvm-vm2 group microvm-vm2 vnet_hdr && ip link set vm-vm2 alias microvm:vm2 master br-vm2 && ip link set vm-vm2 up",
	}
	for _, tt := range []struct {
		name           string
		edit           func(o *observed)
		cleanup, setup []string
	}{
		{"applied", func(o *observed) {}, []string{}, []string{}},
		{"a VM left the file", func(o *observed) {
			o.links = append(o.links, oldBr, oldTap)
			o.routing.rules = append(o.routing.rules, Rule{5101, "br-old", netip.Prefix{}, 0x6d766d, false}, Rule{5101, "br-old", netip.Prefix{}, 0x6d766d, true})
			o.routing.blackholes = append(o.routing.blackholes, netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("fddc:b7cf:609b:900::/64"))
		}, []string{"ip link del vm-old", "ip link del br-old",
			"ip rule del priority 5101 iif br-old lookup 7173741 protocol 109",
			"ip -6 rule del priority 5101 iif br-old lookup 7173741 protocol 109",
			"ip route del blackhole 10.9.0.0/24 table 7173741 proto 109",
			"ip route del blackhole fddc:b7cf:609b:900::/64 table 7173741 proto 109"}, []string{}},
		{"the rules and the table flushed (ip rule flush, ip route flush table 7173741)", func(o *observed) { o.routing = routing{} },
			[]string{}, []string{vm1Blackhole, vm1Blackhole6, vm2Blackhole, vm2Blackhole6, vm1Rule, vm1Rule6, vm2Rule, vm2Rule6}},
		{"the IPv6 rules flushed (ip -6 rule flush)", func(o *observed) {
			o.routing.rules = slices.DeleteFunc(o.routing.rules, func(r Rule) bool { return r.IPv6 })
		}, []string{}, []string{vm1Rule6, vm2Rule6}},
		{"forwarding off", func(o *observed) { o.forward = "0" }, []string{}, []string{"sysctl -w net.ipv4.ip_forward=1"}},
		{"IPv6 forwarding off", func(o *observed) { o.forward6, o.acceptRA = "0", "0" }, []string{}, []string{"sysctl -w net.ipv6.conf.all.forwarding=1"}},
		{"IPv6 forwarding off, the uplink taking router advertisements", func(o *observed) { o.forward6 = "0" }, []string{}, []string{
			"sysctl -w net.ipv6.conf.eth0.accept_ra=2  # keep taking router advertisements on the uplink once IPv6 forwarding is on",
			"sysctl -w net.ipv6.conf.all.forwarding=1"}},
		{"a new VM", func(o *observed) {
			o.links = o.links[:4]
			delete(o.addrs, "br-vm2")
			delete(o.users, "microvm-vm2")
			o.routing.rules, o.routing.blackholes = o.routing.rules[:2], o.routing.blackholes[:2]
		}, []string{}, append([]string{useradd("microvm-vm2", "vm2", true), vm2Blackhole, vm2Blackhole6, vm2Rule, vm2Rule6}, vm2Links...)},
		{"a new VM on a host without kvm", func(o *observed) {
			o.links = o.links[:4]
			delete(o.users, "microvm-vm2")
			o.kvm = nil
			o.routing.rules, o.routing.blackholes = o.routing.rules[:2], o.routing.blackholes[:2]
		}, []string{}, append([]string{useradd("microvm-vm2", "vm2", false), vm2Blackhole, vm2Blackhole6, vm2Rule, vm2Rule6}, vm2Links...)},
		{"kvm made after the user", func(o *observed) { o.users["microvm-vm1"] = IDs{UID: 990, GID: 990} },
			[]string{}, []string{"usermod --append --groups kvm microvm-vm1"}},
		{"vm1's bridge lost its address", func(o *observed) { o.addrs["br-vm1"] = o.addrs["br-vm1"][1:] },
			[]string{}, []string{"ip addr add 10.1.0.1/24 dev br-vm1"}},
	} {
		o := applied()
		tt.edit(o)
		d := diff(in, o)
		if got := texts(d.Cleanup); !slices.Equal(got, tt.cleanup) {
			t.Errorf("%s: cleanup:\ngot  %q\nwant %q", tt.name, got, tt.cleanup)
		}
		if got := texts(d.Setup); !slices.Equal(got, tt.setup) {
			t.Errorf("%s: setup:\ngot  %q\nwant %q", tt.name, got, tt.setup)
		}
		if len(d.Warnings)+len(d.Notes) > 0 {
			t.Errorf("%s: warnings %q, notes %q; want none", tt.name, d.Warnings, d.Notes)
		}
	}
}

// TestRoutingDiff: an opening routes its pair both ways (replies need a
// route), once however many entries open it; every VM's packets are
// looked up in the blackhole table after; an opening that goes takes its
// rules with it; a VM needs its own rule and every blackhole to start,
// not its openings.
func TestRoutingDiff(t *testing.T) {
	in := model(t, `[vm.web]
subnet = "10.5.0.0/24"
allow = ["vm:db tcp 6379", "vm:db icmp", "192.168.1.20"]
[vm.db]
subnet = "10.6.0.0/24"
allow = ["vm:web udp 53"]
[vm.vm1]
subnet = "10.1.0.0/24"
`)
	const (
		webToDB   = "ip rule add priority 5100 iif br-web to 10.6.0.2/32 lookup main protocol 109"
		dbToWeb   = "ip rule add priority 5100 iif br-db to 10.5.0.2/32 lookup main protocol 109"
		dbRule    = "ip rule add priority 5101 iif br-db lookup 7173741 protocol 109"
		vm1Rule   = "ip rule add priority 5101 iif br-vm1 lookup 7173741 protocol 109"
		webRule   = "ip rule add priority 5101 iif br-web lookup 7173741 protocol 109"
		webToDB6  = "ip -6 rule add priority 5100 iif br-web to fddc:b7cf:609b:600::2/128 lookup main protocol 109"
		dbToWeb6  = "ip -6 rule add priority 5100 iif br-db to fddc:b7cf:609b:500::2/128 lookup main protocol 109"
		dbRule6   = "ip -6 rule add priority 5101 iif br-db lookup 7173741 protocol 109"
		vm1Rule6  = "ip -6 rule add priority 5101 iif br-vm1 lookup 7173741 protocol 109"
		webRule6  = "ip -6 rule add priority 5101 iif br-web lookup 7173741 protocol 109"
		blackhole = "ip route replace blackhole %s table 7173741 proto 109"
	)
	var holes []string
	for _, p := range []string{"10.6.0.0/24", "fddc:b7cf:609b:600::/64", "10.1.0.0/24", "fddc:b7cf:609b:100::/64", "10.5.0.0/24", "fddc:b7cf:609b:500::/64"} {
		holes = append(holes, fmt.Sprintf(blackhole, p))
	}
	want := wantRouting(in)
	for _, tt := range []struct {
		name           string
		have           routing
		cleanup, setup []string
	}{
		{"nothing yet", routing{}, nil, append(slices.Clone(holes), dbToWeb, webToDB, dbToWeb6, webToDB6, dbRule, dbRule6, vm1Rule, vm1Rule6, webRule, webRule6)},
		{"applied", want, nil, nil},
		{"an opening that went, a VM that went", routing{
			rules: append(slices.Clone(want.rules),
				Rule{5100, "br-vm1", netip.MustParsePrefix("10.6.0.2/32"), 254, false},
				Rule{5101, "br-old", netip.Prefix{}, 0x6d766d, false}),
			blackholes: append(slices.Clone(want.blackholes), netip.MustParsePrefix("10.9.0.0/24")),
		}, []string{
			"ip rule del priority 5100 iif br-vm1 to 10.6.0.2/32 lookup main protocol 109",
			"ip rule del priority 5101 iif br-old lookup 7173741 protocol 109",
			"ip route del blackhole 10.9.0.0/24 table 7173741 proto 109",
		}, nil},
	} {
		cleanup, setup := routingDiff(want, tt.have)
		if got := texts(cleanup); !slices.Equal(got, orEmpty(tt.cleanup)) {
			t.Errorf("%s: cleanup:\ngot  %q\nwant %q", tt.name, got, tt.cleanup)
		}
		if got := texts(setup); !slices.Equal(got, orEmpty(tt.setup)) {
			t.Errorf("%s: setup:\ngot  %q\nwant %q", tt.name, got, tt.setup)
		}
	}
	vm1, _ := in.VM("vm1")
	if got, want := texts(vmRouting(in, vm1, routing{})), append(slices.Clone(holes), vm1Rule, vm1Rule6); !slices.Equal(got, want) {
		t.Errorf("vm1 needs to start:\ngot  %q\nwant %q", got, want)
	}
	if got := texts(vmRouting(in, vm1, want)); len(got) > 0 {
		t.Errorf("vm1 needs to start, with routing applied: %q", got)
	}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
