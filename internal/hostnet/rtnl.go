package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// The actions that run for every VM (a bridge, a TAP, addresses, rules
// and routes: eleven per VM) send their own rtnetlink requests: one
// blocking socket per request, opened in the calling thread's network
// namespace and closed before it returns, the way `ip` does. netlink's
// package functions take about three times as long for the same request
// (a non-blocking socket registered with Go's poller, timeouts set, the
// reply parsed into a full Link), which at 250 VMs was most of a first
// apply; and one request here can do what took two there (a TAP's alias
// and bridge). The message types and attributes are netlink's (package
// nl); only the sending is here.
//
// A link's alias is set while it is down: the kernel tells every
// listener of a change to an up link (NETDEV_CHANGE), and IPv6 answers by
// walking all its routes, which at 250 VMs made setting an alias cost
// more than making the link.

// request sends one rtnetlink request and waits for the kernel's answer:
// nil, or the errno it gave (errors.Is(err, os.ErrExist) holds for
// EEXIST).
func request(typ, flags int, data ...nl.NetlinkRequestData) error {
	req := nl.NewNetlinkRequest(typ, flags|unix.NLM_F_ACK)
	for _, d := range data {
		req.AddData(d)
	}
	return exchange(req, false, unix.Getpagesize(), func(m syscall.NetlinkMessage) (bool, error) {
		return m.Header.Type == unix.NLMSG_ERROR, errnoOf(m)
	})
}

// exchange sends req on a socket of its own and calls f with each message
// the kernel answers it with, until f says it is done or fails. With
// strict, the kernel checks the request strictly and narrows a dump to
// what the attributes in it ask for.
func exchange(req *nl.NetlinkRequest, strict bool, bufSize int, f func(syscall.NetlinkMessage) (done bool, err error)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if strict {
		// A kernel without strict checking (before 4.20) dumps everything,
		// and the callers filter what they read again.
		unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
	}
	if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending a netlink request: %w", err)
	}
	buf := make([]byte, bufSize)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the kernel's answer: %w", err)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("reading the kernel's answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq {
				continue
			}
			if done, err := f(m); done || err != nil {
				return err
			}
		}
	}
}

// errnoOf is the error an NLMSG_ERROR message carries, nil for an ack.
func errnoOf(m syscall.NetlinkMessage) error {
	if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
		return nil
	}
	if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
		return unix.Errno(-errno)
	}
	return nil
}

// setLink changes the link with index i in one request: its alias if
// alias is set, its bridge if master is not 0, and sets it up if up.
func setLink(i int, alias string, master int, up bool) error {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(i)
	if up {
		msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	}
	data := []nl.NetlinkRequestData{msg}
	if alias != "" {
		data = append(data, nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	}
	if master != 0 {
		data = append(data, nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	}
	return request(unix.RTM_NEWLINK, 0, data...)
}

// newBridge creates the bridge name, in group, down, failing with EEXIST
// if a link of that name exists.
func newBridge(name string, group uint32) error {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	return request(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, msg,
		nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)),
		nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)),
		info)
}

// newAddr adds p to the link with index i; flags are IFA_F_* (nodad).
func newAddr(i int, p netip.Prefix, flags uint32) error {
	family := unix.AF_INET
	if p.Addr().Is6() {
		family = unix.AF_INET6
	}
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(i)
	msg.Prefixlen = uint8(p.Bits())
	ip := p.Addr().AsSlice()
	data := []nl.NetlinkRequestData{msg,
		nl.NewRtAttr(unix.IFA_LOCAL, ip),
		nl.NewRtAttr(unix.IFA_ADDRESS, ip),
		nl.NewRtAttr(unix.IFA_FLAGS, nl.Uint32Attr(flags))}
	if p.Addr().Is4() && p.Bits() < 31 {
		// The subnet's broadcast address, which the kernel does not
		// derive (`ip addr add ... brd +`).
		bc := p.Masked().Addr().As4()
		host := ^uint32(0) >> p.Bits()
		binary.BigEndian.PutUint32(bc[:], binary.BigEndian.Uint32(bc[:])|host)
		data = append(data, nl.NewRtAttr(unix.IFA_BROADCAST, bc[:]))
	}
	return request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, data...)
}

// newRule adds r.
func newRule(r Rule) error {
	// A rule's header (struct fib_rule_hdr) has a route's layout.
	h := &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_UNSPEC, Type: unix.FR_ACT_TO_TBL}}
	if r.IPv6 {
		h.Family = unix.AF_INET6
	}
	if r.Table < 256 {
		h.Table = uint8(r.Table)
	}
	data := []nl.NetlinkRequestData{h,
		nl.NewRtAttr(unix.FRA_PRIORITY, nl.Uint32Attr(uint32(r.Pref))),
		nl.NewRtAttr(unix.FRA_IIFNAME, nl.ZeroTerminated(r.IIF)),
		nl.NewRtAttr(unix.FRA_TABLE, nl.Uint32Attr(uint32(r.Table))),
		nl.NewRtAttr(unix.FRA_PROTOCOL, []byte{config.RouteProto})}
	if r.To.IsValid() {
		h.Dst_len = uint8(r.To.Bits())
		data = append(data, nl.NewRtAttr(unix.FRA_DST, r.To.Addr().AsSlice()))
	}
	return request(unix.RTM_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, data...)
}

// replaceBlackhole sets the route for dst in the program's table to a
// blackhole.
func replaceBlackhole(dst netip.Prefix) error {
	h := &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET, Dst_len: uint8(dst.Bits()), Table: unix.RT_TABLE_UNSPEC,
		Protocol: config.RouteProto, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_BLACKHOLE}}
	if dst.Addr().Is6() {
		h.Family = unix.AF_INET6
	}
	return request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, h,
		nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(config.RouteTable)),
		nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
}
