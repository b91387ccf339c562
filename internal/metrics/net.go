package metrics

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
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

// linkTraffic reads the counters of every link, by name.
func linkTraffic() (map[string]Traffic, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := make(map[string]Traffic, len(links))
	for _, l := range links {
		a := l.Attrs()
		s := a.Statistics
		if s == nil {
			continue
		}
		// The TAP's transmit side is the guest's receive side.
		out[a.Name] = Traffic{
			RxBytes: s.TxBytes, RxPackets: s.TxPackets, RxErrors: s.TxErrors, RxDrops: s.TxDropped,
			TxBytes: s.RxBytes, TxPackets: s.RxPackets, TxErrors: s.RxErrors, TxDrops: s.RxDropped,
		}
	}
	return out, nil
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
