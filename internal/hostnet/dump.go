package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A plan reads every link and every route of the host. netlink's
// LinkList and RouteList parse all of each (statistics, IPv6 settings,
// every attribute), which at 250 VMs took 10 and 7 ms of the 3 and 1 ms
// the kernel spends on the dumps; listLinks and listRoutes keep only what
// the program reads.

// dump retries list while the kernel says the dump was interrupted by a
// change, as the program's links change under other tools too.
func dump[T any](list func() ([]T, error)) ([]T, error) {
	for range 9 {
		out, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return list()
}

// dumpRequest dumps typ (RTM_GETLINK, RTM_GETROUTE) and calls f with
// each message's payload, which f must copy what it keeps of: the buffer
// is read into again. Attributes in filter narrow the dump, with strict
// checking (as `ip route show table main dev eth0` does it), on kernels
// that have it: a caller checks what it reads all the same.
func dumpRequest(typ int, hdr nl.NetlinkRequestData, filter []nl.NetlinkRequestData, f func(payload []byte) error) error {
	req := nl.NewNetlinkRequest(typ, unix.NLM_F_DUMP)
	req.AddData(hdr)
	for _, a := range filter {
		req.AddData(a)
	}
	interrupted := false
	return exchange(req, len(filter) > 0, 1<<16, func(m syscall.NetlinkMessage) (bool, error) {
		interrupted = interrupted || m.Header.Flags&unix.NLM_F_DUMP_INTR != 0
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			if interrupted {
				return true, netlink.ErrDumpInterrupted
			}
			return true, nil
		case unix.NLMSG_ERROR:
			return true, errnoOf(m)
		}
		return false, f(m.Data)
	})
}

// listLinks returns every link with its name, index, alias, group,
// bridge (MasterIndex), up flag and kind: a *netlink.Bridge, a
// *netlink.Tuntap (with its mode, owner, group, flags and persistence),
// or a *netlink.GenericLink of that kind ("device" when it has none).
func listLinks() ([]netlink.Link, error) {
	var out []netlink.Link
	// Without statistics: the kernel sums each link's counters (its IPv6
	// ones too) over every CPU for a dump, and a plan reads none of them.
	skipStats := nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(rtextFilterSkipStats))
	err := dumpRequest(unix.RTM_GETLINK, nl.NewIfInfomsg(unix.AF_UNSPEC), []nl.NetlinkRequestData{skipStats}, func(b []byte) error {
		if len(b) < unix.SizeofIfInfomsg {
			return errors.New("a link message too short")
		}
		msg := nl.DeserializeIfInfomsg(b)
		attrs, err := nl.ParseRouteAttr(b[unix.SizeofIfInfomsg:])
		if err != nil {
			return err
		}
		a := netlink.LinkAttrs{Index: int(msg.Index), RawFlags: msg.Flags}
		if msg.Flags&unix.IFF_UP != 0 {
			a.Flags = net.FlagUp
		}
		kind := "device"
		var info []syscall.NetlinkRouteAttr
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.IFLA_IFNAME:
				a.Name = cstring(at.Value)
			case unix.IFLA_IFALIAS:
				a.Alias = cstring(at.Value)
			case unix.IFLA_GROUP:
				a.Group = u32(at.Value)
			case unix.IFLA_MASTER:
				a.MasterIndex = int(u32(at.Value))
			case unix.IFLA_LINKINFO:
				nested, err := nl.ParseRouteAttr(at.Value)
				if err != nil {
					return err
				}
				for _, in := range nested {
					switch in.Attr.Type {
					case unix.IFLA_INFO_KIND:
						kind = cstring(in.Value)
					case unix.IFLA_INFO_DATA:
						if info, err = nl.ParseRouteAttr(in.Value); err != nil {
							return err
						}
					}
				}
			}
		}
		switch kind {
		case "bridge":
			out = append(out, &netlink.Bridge{LinkAttrs: a})
		case "tun":
			out = append(out, tuntapOf(a, info))
		default:
			out = append(out, &netlink.GenericLink{LinkAttrs: a, LinkType: kind})
		}
		return nil
	})
	return out, err
}

// tuntapOf reads a TAP's settings from its IFLA_INFO_DATA.
func tuntapOf(a netlink.LinkAttrs, info []syscall.NetlinkRouteAttr) *netlink.Tuntap {
	t := &netlink.Tuntap{LinkAttrs: a, NonPersist: true}
	for _, at := range info {
		if len(at.Value) == 0 {
			continue
		}
		on := at.Value[0] != 0
		switch at.Attr.Type {
		case nl.IFLA_TUN_OWNER:
			t.Owner = u32(at.Value)
		case nl.IFLA_TUN_GROUP:
			t.Group = u32(at.Value)
		case nl.IFLA_TUN_TYPE:
			t.Mode = netlink.TuntapMode(at.Value[0])
		case nl.IFLA_TUN_PI:
			if !on {
				t.Flags |= netlink.TUNTAP_NO_PI
			}
		case nl.IFLA_TUN_VNET_HDR:
			if on {
				t.Flags |= netlink.TUNTAP_VNET_HDR
			}
		case nl.IFLA_TUN_MULTI_QUEUE:
			if on {
				t.Flags |= netlink.TUNTAP_MULTI_QUEUE
			}
		case nl.IFLA_TUN_PERSIST:
			t.NonPersist = !on
		}
	}
	return t
}

// route is what a plan reads of a route.
type route struct {
	family, table, typ, proto int
	dst                       netip.Prefix // 0.0.0.0/0 or ::/0 for a default route
	gw                        netip.Addr   // the zero Addr without a gateway
	link                      int          // the output link's index, 0 without one
}

// String describes r as `ip route` shows it, enough to find it there.
func (r route) String() string {
	s := r.dst.String()
	if r.typ == unix.RTN_BLACKHOLE {
		s = "blackhole " + s
	}
	if r.gw.IsValid() {
		s += " via " + r.gw.String()
	}
	if r.link != 0 {
		s += fmt.Sprintf(" dev #%d", r.link)
	}
	return s + fmt.Sprintf(" table %d proto %d", r.table, r.proto)
}

// listRoutes returns the routes of every table, IPv4 and IPv6, but the
// kernel's cached clones.
func listRoutes() ([]route, error) { return routesOf(0, 0) }

// routesOf lists the routes of table out of link, or of every table (0)
// out of any link (0): the kernel walks only that table, and IPv6's
// tables hold a route per address and a multicast route per link.
func routesOf(table, link int) ([]route, error) {
	var filter []nl.NetlinkRequestData
	if table != 0 {
		filter = append(filter, nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(uint32(table))))
	}
	if link != 0 {
		filter = append(filter, nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(link))))
	}
	var out []route
	err := dumpRequest(unix.RTM_GETROUTE, &nl.RtMsg{}, filter, func(b []byte) error {
		if len(b) < unix.SizeofRtMsg {
			return errors.New("a route message too short")
		}
		msg := nl.DeserializeRtMsg(b)
		if msg.Flags&unix.RTM_F_CLONED != 0 || (msg.Family != unix.AF_INET && msg.Family != unix.AF_INET6) {
			return nil
		}
		attrs, err := nl.ParseRouteAttr(b[unix.SizeofRtMsg:])
		if err != nil {
			return err
		}
		r := route{family: int(msg.Family), table: int(msg.Table), typ: int(msg.Type), proto: int(msg.Protocol)}
		dst := netip.IPv4Unspecified()
		if msg.Family == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
		for _, at := range attrs {
			switch at.Attr.Type {
			case unix.RTA_DST:
				dst, _ = netip.AddrFromSlice(at.Value) // copies
			case unix.RTA_GATEWAY:
				r.gw, _ = netip.AddrFromSlice(at.Value)
			case unix.RTA_OIF:
				r.link = int(u32(at.Value))
			case unix.RTA_TABLE:
				r.table = int(u32(at.Value))
			}
		}
		r.dst = netip.PrefixFrom(dst, int(msg.Dst_len))
		out = append(out, r)
		return nil
	})
	return out, err
}

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS of linux/rtnetlink.h.
const rtextFilterSkipStats = 1 << 3

func u32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}

// cstring is a netlink string attribute without its terminating NUL.
func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
