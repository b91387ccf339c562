package metrics

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/firewall"
)

// What the network says, from the kernel over netlink, in the network
// namespace of the calling thread (the host daemon's): every link's
// counters in one dump, and the firewall's named counters in another.

// Traffic is a VM's traffic, as its guest sees it: what it received is
// what its TAP sent, and the other way round.
type Traffic struct {
	RxBytes, RxPackets, RxErrors, RxDrops uint64
	TxBytes, TxPackets, TxErrors, TxDrops uint64
}

// linkTraffic reads the counters of the links named in want: one dump of
// every link, read into one buffer, of which only each link's name and
// 64-bit counters are looked at.
func linkTraffic(want map[string]bool) (map[string]Traffic, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	// struct nlmsghdr, then struct ifinfomsg (all zero: every family).
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.RTM_GETLINK)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := make(map[string]Traffic, len(want))
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("listing links: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			size := int(binary.NativeEndian.Uint32(b))
			typ := binary.NativeEndian.Uint16(b[4:])
			if size < unix.NLMSG_HDRLEN || size > len(b) {
				return nil, errors.New("listing links: a truncated netlink message")
			}
			switch typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if size >= unix.NLMSG_HDRLEN+4 {
					if e := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); e != 0 {
						return nil, fmt.Errorf("listing links: %w", unix.Errno(-e))
					}
				}
			case unix.RTM_NEWLINK:
				if name, st, ok := linkAttrs(b[unix.NLMSG_HDRLEN+unix.SizeofIfInfomsg : size]); ok && want[string(name)] {
					c := func(i int) uint64 { return binary.NativeEndian.Uint64(st[8*i:]) }
					// struct rtnl_link_stats64: rx_packets, tx_packets,
					// rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped,
					// tx_dropped, ... The TAP's transmit side is the
					// guest's receive side.
					out[string(name)] = Traffic{
						RxPackets: c(1), RxBytes: c(3), RxErrors: c(5), RxDrops: c(7),
						TxPackets: c(0), TxBytes: c(2), TxErrors: c(4), TxDrops: c(6),
					}
				}
			}
			b = b[min(len(b), (size+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}

// linkAttrs finds a link's name (IFLA_IFNAME) and its counters
// (IFLA_STATS64) among its attributes.
func linkAttrs(b []byte) (name, stats []byte, ok bool) {
	for len(b) >= unix.SizeofRtAttr {
		size := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:])
		if size < unix.SizeofRtAttr || size > len(b) {
			break
		}
		v := b[unix.SizeofRtAttr:size]
		switch typ {
		case unix.IFLA_IFNAME:
			name = bytes.TrimRight(v, "\x00")
		case unix.IFLA_STATS64:
			stats = v
		}
		b = b[min(len(b), (size+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
	}
	return name, stats, len(name) > 0 && len(stats) >= 64
}

// Count is packets and bytes.
type Count struct{ Packets, Bytes uint64 }

// dropCounters reads the program's table: whether it is loaded, and its
// named counters by name (package firewall names them per VM).
func dropCounters() (present bool, counters map[string]Count, err error) {
	c, err := nftables.New()
	if err != nil {
		return false, nil, err
	}
	t := &nftables.Table{Name: firewall.Table, Family: nftables.TableFamilyINet}
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			return false, nil, nil
		}
		return false, nil, fmt.Errorf("reading table %s %s: %w", firewall.Family, firewall.Table, err)
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return true, nil, fmt.Errorf("reading the counters of table %s %s: %w", firewall.Family, firewall.Table, err)
	}
	counters = map[string]Count{}
	for _, o := range objs {
		if ctr, ok := o.(*nftables.CounterObj); ok {
			counters[ctr.Name] = Count{Packets: ctr.Packets, Bytes: ctr.Bytes}
		}
	}
	return true, counters, nil
}
