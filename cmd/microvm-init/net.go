package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkWait is how long the network interface may take to appear after
// virtio_net is loaded (its probe may be asynchronous, as for virtiofs).
const linkWait = 5 * time.Second

// configureNetwork brings lo up, gives the first ethernet link addr and
// brings it up, and adds the default route via gw; with c.Addr6, the same
// for IPv6 (see configureIPv6). It returns the link's name (eth0).
func configureNetwork(c Config) (string, error) {
	addr, gw := c.Addr, c.Gateway
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return "", fmt.Errorf("bringing up lo: %w", err)
	}
	link, err := waitEthernet(time.Now().Add(linkWait))
	if err != nil {
		return "", err
	}
	name := link.Attrs().Name
	if c.Addr6.IsValid() {
		// Before the link comes up: it would start autoconfiguring.
		if err := ipv6Settings(name); err != nil {
			return "", err
		}
	}
	ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return "", fmt.Errorf("adding address %s to %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("bringing up %s: %w", name, err)
	}
	// No destination: the default route, of the gateway's family.
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
	if err := netlink.RouteReplace(route); err != nil {
		return "", fmt.Errorf("adding default route via %s dev %s: %w", gw, name, err)
	}
	if c.Addr6.IsValid() {
		if err := configureIPv6(link, c.Addr6, c.Gateway6); err != nil {
			return "", err
		}
	}
	return name, nil
}

// ipv6Settings makes the link's IPv6 the host's to say, as IPv4 is: no
// router advertisements taken (a VM's, or anyone's on its bridge, would
// give it routes), no address of its own making but the link-local one
// from its MAC (EUI-64, which the host's firewall lets it send from), and
// no duplicate address detection (its addresses are its own by design,
// and the test would hold them back for a second).
func ipv6Settings(link string) error {
	for _, s := range []struct{ key, value string }{
		{"accept_ra", "0"}, {"autoconf", "0"}, {"accept_dad", "0"}, {"addr_gen_mode", "0"},
	} {
		path := "/proc/sys/net/ipv6/conf/" + link + "/" + s.key
		if err := os.WriteFile(path, []byte(s.value), 0o644); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("configuring IPv6 on %s: the kernel has no IPv6 (%s is missing); turn it on, or set ipv6 = false in the host's [host]", link, path)
			}
			return fmt.Errorf("configuring IPv6 on %s: setting %s: %w", link, s.key, err)
		}
	}
	return nil
}

// configureIPv6 gives link addr and the default route via gw.
func configureIPv6(link netlink.Link, addr netip.Prefix, gw netip.Addr) error {
	name := link.Attrs().Name
	ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 128)}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipnet, Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", addr, name, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("adding default route via %s dev %s: %w", gw, name, err)
	}
	return nil
}

// waitEthernet returns the ethernet link with the lowest index, waiting
// for one to appear until deadline.
func waitEthernet(deadline time.Time) (netlink.Link, error) {
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing network interfaces: %w", err)
		}
		if l := firstEthernet(links); l != nil {
			return l, nil
		}
		if time.Now().After(deadline) {
			var names []string
			for _, l := range links {
				names = append(names, l.Attrs().Name)
			}
			return nil, fmt.Errorf("finding the network interface: no ethernet interface after %v (there are: %v)", linkWait, names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// firstEthernet returns the ethernet link with the lowest index, or nil.
// A virtio NIC is a plain "device" with an ethernet link layer; lo is
// neither.
func firstEthernet(links []netlink.Link) netlink.Link {
	links = slices.DeleteFunc(slices.Clone(links), func(l netlink.Link) bool {
		a := l.Attrs()
		return l.Type() != "device" || a.EncapType != "ether" || a.Flags&net.FlagLoopback != 0
	})
	if len(links) == 0 {
		return nil
	}
	return slices.MinFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
}

// writeResolvConf writes path naming dns as the resolver, unless path
// exists (even as a dangling symbolic link): the host writes the VM's
// resolv.conf, and a person may have changed it. This is the fallback for
// a VM whose /etc has none. It reports whether it wrote the file.
func writeResolvConf(path string, dns netip.Addr) (bool, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = fmt.Fprintf(f, "# Written by microvm-init from microvm.dns on the kernel command line.\nnameserver %s\n", dns)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	return true, nil
}
