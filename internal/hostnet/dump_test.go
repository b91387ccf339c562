package hostnet_test

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

// TestListsMatchNetlink: on a host part applied in a sandbox (bridges,
// TAPs of two queue modes, the uplink's veth, a link down, routes in
// several tables, blackholes), ListLinks and ListRoutes give what
// netlink's LinkList and RouteList give, in every field a plan reads.
func TestListsMatchNetlink(t *testing.T) {
	in, sb := sandboxFor(t, `[vm.vm1]
subnet = "10.1.0.0/24"
[vm.vm2]
subnet = "10.2.0.0/24"
vcpu = 2
`)
	applyIn(t, sb, in)
	var uplink int
	err := sandbox.Do(sb.Host, func() error {
		// Links that are not the program's, down, and a route in a table
		// of its own.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		uplink = l.Attrs().Index
		dst := func(c byte) *net.IPNet {
			return &net.IPNet{IP: net.IPv4(192, 0, c, 0).To4(), Mask: net.CIDRMask(24, 32)}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: uplink, Dst: dst(2), Table: 99}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Type: unix.RTN_BLACKHOLE, Dst: dst(3), Table: 99})
	})
	if err != nil {
		t.Fatal(err)
	}
	var gotLinks, wantLinks []netlink.Link
	var gotRoutes []hostnet.Route
	var wantRoutes []netlink.Route
	err = sandbox.Do(sb.Host, func() error {
		var err error
		if gotLinks, err = hostnet.ListLinks(); err != nil {
			return err
		}
		if wantLinks, err = netlink.LinkList(); err != nil {
			return err
		}
		if gotRoutes, err = hostnet.ListRoutes(); err != nil {
			return err
		}
		wantRoutes, err = netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	link := func(l netlink.Link) string {
		a := l.Attrs()
		s := fmt.Sprintf("%s index %d type %s alias %q group %d master %d up %v", a.Name, a.Index, l.Type(), a.Alias, a.Group, a.MasterIndex, a.Flags&net.FlagUp != 0)
		if tap, ok := l.(*netlink.Tuntap); ok {
			const mask = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE
			s += fmt.Sprintf(" mode %d owner %d group %d flags %#x nonpersist %v", tap.Mode, tap.Owner, tap.Group, tap.Flags&mask, tap.NonPersist)
		}
		return s
	}
	var libRoutes []string
	for _, r := range wantRoutes {
		gw := "invalid IP"
		if r.Gw != nil {
			gw = r.Gw.String()
		}
		libRoutes = append(libRoutes, fmt.Sprintf("family %d table %d type %d proto %d dst %v gw %s dev %d", r.Family, r.Table, r.Type, r.Protocol, r.Dst, gw, r.LinkIndex))
	}
	var ours []string
	for _, r := range gotRoutes {
		ours = append(ours, hostnet.ShowRoute(r))
	}
	compare(t, "links", gotLinks, wantLinks, link)
	compare(t, "routes", ours, libRoutes, func(s string) string { return s })
	// A filtered dump gives what filtering the whole one gives.
	var filtered, main []string
	for _, r := range gotRoutes {
		if s := hostnet.ShowRoute(r); strings.Contains(s, " table 254 ") && strings.HasSuffix(s, fmt.Sprintf(" dev %d", uplink)) {
			main = append(main, s)
		}
	}
	err = sandbox.Do(sb.Host, func() error {
		rs, err := hostnet.RoutesOf(unix.RT_TABLE_MAIN, uplink)
		for _, r := range rs {
			filtered = append(filtered, hostnet.ShowRoute(r))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(main) == 0 {
		t.Error("no route out of the uplink in table main: the filtered dump is not tested")
	}
	compare(t, "routes of the uplink in table main", filtered, main, func(s string) string { return s })
	kinds := map[string]bool{}
	for _, l := range gotLinks {
		kinds[l.Type()] = true
	}
	for _, k := range []string{"bridge", "tuntap", "veth"} {
		if !kinds[k] {
			t.Errorf("no link of type %s listed: the test proves less than it says", k)
		}
	}
}

func compare[T any](t *testing.T, what string, got, want []T, show func(T) string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d, want %d", what, len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if g, w := show(got[i]), show(want[i]); g != w {
			t.Errorf("%s %d:\ngot  %s\nwant %s", what, i, g, w)
		}
	}
}
