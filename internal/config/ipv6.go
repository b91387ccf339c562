package config

import (
	"crypto/sha256"
	"fmt"
	"net/netip"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Every VM has IPv6 beside IPv4 unless [host] says ipv6 = false: a /64 of
// its own, with the gateway at ::1 on its bridge and the VM at ::2.
//
//	[host]
//	ipv6 = true                          # the default
//	ipv6_prefix = "2001:db8:7::/48"      # a prefix routed to this host; by default a ULA, with NAT66
//
// The /64s come from ipv6_prefix, one per VM, numbered by the second and
// third octets of the VM's IPv4 subnet, so that the two read alike:
// 10.1.0.0/24 gets PREFIX:100::/64, 10.12.3.0/24 PREFIX:c03::/64. Hosts
// whose VM subnets differ (as Tailscale needs for IPv4 already) so have
// distinct IPv6 subnets too, whatever their prefixes.
//
// Without ipv6_prefix the prefix is a unique local address (ULA,
// fd00::/8) derived from the uplink's name and state_dir: the same on
// every apply of the same host, computed here from the file alone (the
// model never reads the host), and changed only when one of them is.
// VMs on a ULA reach the internet through NAT66 on the uplink, as IPv4
// does. A global ipv6_prefix is routed, not NATed: the network outside
// must route it to the host's uplink.

// DefaultIPv6 is [host] ipv6 when the file leaves it out.
const DefaultIPv6 = true

// ULARange is where unique local addresses live (RFC 4193); NAT66 is for
// VM networks inside it.
var ULARange = netip.MustParsePrefix("fc00::/7")

// ipv6IDBits is how many bits number a VM's /64 inside ipv6_prefix: the
// second and third octets of its IPv4 subnet.
const ipv6IDBits = 16

// hostIPv6 reads ipv6 and ipv6_prefix, after uplink and state_dir.
func (p *parser) hostIPv6(h *Host) {
	h.IPv6 = DefaultIPv6
	if v, ok := p.host["ipv6"]; ok {
		if v.kind != unstable.Bool {
			p.errorf(v.pos, "ipv6 must be true or false, not %s; false turns IPv6 off for every VM of this host", kindName(v.kind))
		} else {
			h.IPv6 = v.str == "true"
		}
	}
	v, given := p.host["ipv6_prefix"]
	if given && !h.IPv6 {
		p.errorf(v.pos, "ipv6_prefix is only used with IPv6; remove it, or remove ipv6 = false")
		return
	}
	if !h.IPv6 {
		return
	}
	if !given {
		h.IPv6Prefix = ulaFor(h.Uplink, h.StateDir)
		h.NAT66 = true
		return
	}
	s, ok := p.str(v, "ipv6_prefix")
	if !ok {
		return
	}
	pfx, err := netip.ParsePrefix(s)
	switch {
	case err != nil || !pfx.Addr().Is6() || pfx.Addr().Is4In6():
		p.errorf(v.pos, "ipv6_prefix = %q is not an IPv6 prefix; write it like \"2001:db8:7::/48\"", s)
	case pfx.Bits() > 64-ipv6IDBits || pfx.Bits() < 16:
		p.errorf(v.pos, "ipv6_prefix = %q: /%d is out of range; use /16 to /%d: each VM gets a /64 of it, numbered by 16 bits of its IPv4 subnet", s, pfx.Bits(), 64-ipv6IDBits)
	case pfx.Masked() != pfx:
		p.errorf(v.pos, "ipv6_prefix = %q has host bits set; the prefix is %q", s, pfx.Masked().String())
	case pfx.Overlaps(TailscaleRange6):
		p.errorf(v.pos, "ipv6_prefix = %q overlaps Tailscale's %s, where tailnet addresses live; use another", s, TailscaleRange6)
	case !globalUnicast.Contains(pfx.Addr()) && !ULARange.Contains(pfx.Addr()):
		p.errorf(v.pos, "ipv6_prefix = %q is neither global unicast (2000::/3, routed to this host) nor a unique local prefix (fd00::/8, NATed); use one of those", s)
	default:
		h.IPv6Prefix = pfx
		h.NAT66 = ULARange.Contains(pfx.Addr())
	}
}

var globalUnicast = netip.MustParsePrefix("2000::/3")

// ulaFor derives the host's ULA /48 (fd00::/8 and a 40-bit global ID,
// RFC 4193) from the uplink's name and state_dir.
func ulaFor(uplink, stateDir string) netip.Prefix {
	sum := sha256.Sum256([]byte("microvm-ula:" + uplink + ":" + stateDir))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 48)
}

// deriveIPv6 gives vm its /64, gateway, address and link-local address.
func (h *Host) deriveIPv6(vm *VM) {
	if !h.IPv6 || !h.IPv6Prefix.IsValid() {
		return
	}
	v4 := vm.Subnet.Addr().As4()
	a := h.IPv6Prefix.Addr().As16()
	a[6], a[7] = v4[1], v4[2] // bits 48-63: the /64's number inside a /48 (or larger) prefix
	vm.Subnet6 = netip.PrefixFrom(netip.AddrFrom16(a), 64)
	a[15] = 1
	vm.Gateway6 = netip.AddrFrom16(a)
	a[15] = 2
	vm.Addr6 = netip.AddrFrom16(a)
	vm.LinkLocal6 = linkLocal(vm.MAC)
}

// linkLocal is the link-local address the kernel gives an interface with
// MAC mac (modified EUI-64, RFC 4291): the guest's init asks for this
// one, and the firewall lets a VM send from it.
func linkLocal(mac []byte) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10] = mac[0]^0x02, mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// ipv6Subnets rejects two VMs whose IPv4 subnets give the same /64.
func (p *parser) ipv6Subnets() {
	seen := map[netip.Prefix]string{}
	for _, vm := range p.in.VMs {
		if !vm.Subnet6.IsValid() {
			continue
		}
		if other, dup := seen[vm.Subnet6]; dup {
			p.errorf(p.in.keys["vm."+vm.Name+".subnet"], "vm.%s.subnet %s gives the same IPv6 subnet %s as vm.%s: a VM's /64 is numbered by the second and third octets of its IPv4 subnet; give one a subnet that differs there, or set ipv6 = false in [host]", vm.Name, vm.Subnet, vm.Subnet6, other)
			continue
		}
		seen[vm.Subnet6] = vm.Name
	}
}

// HasIPv6 reports whether the VM has an IPv6 network.
func (vm *VM) HasIPv6() bool { return vm.Subnet6.IsValid() }

// Subnets are the VM's networks: its IPv4 subnet, and its IPv6 /64 if it
// has one (what Tailscale advertises).
func (vm *VM) Subnets() []netip.Prefix {
	if vm.HasIPv6() {
		return []netip.Prefix{vm.Subnet, vm.Subnet6}
	}
	return []netip.Prefix{vm.Subnet}
}

// String6 says a VM's IPv6 network as plan and validate print it.
func (vm *VM) String6() string {
	if !vm.HasIPv6() {
		return "no IPv6"
	}
	return fmt.Sprintf("%s, gateway %s, address %s", vm.Subnet6, vm.Gateway6, vm.Addr6)
}

// dnsFamily rejects an IPv6 dns (written in vals, of table) on a host
// without IPv6, where no VM could reach it.
func (p *parser) dnsFamily(vm *VM, vals map[string]*value, table string) {
	v, ok := vals["dns"]
	if !ok || p.in.Host.IPv6 {
		return
	}
	if a, err := netip.ParseAddr(vm.DNS); err == nil && a.Is6() {
		p.errorf(v.pos, "%s.dns = %q is IPv6, and this host has ipv6 = false; use an IPv4 resolver, e.g. dns = \"1.1.1.1\"", table, vm.DNS)
	}
}

// ipv6Entries rejects IPv6 addresses in allow and publish's from lists on
// a host without IPv6: no VM sends or gets IPv6 there, so they could only
// mislead (a from list of IPv6 sources alone would close the port).
func (p *parser) ipv6Entries() {
	if p.in.Host.IPv6 {
		return
	}
	bad := func(at, key string, what string) {
		p.errorf(p.posOf(at), "%s: %s is IPv6, and this host has ipv6 = false; remove it, or remove ipv6 = false", key, what)
	}
	for _, a := range p.in.Host.Allow {
		if a.Net.Addr().Is6() {
			bad(a.At, "host.allow", a.Dest())
		}
	}
	for _, vm := range p.in.VMs {
		for _, a := range vm.Allow {
			if a.VM == "" && a.Net.Addr().Is6() {
				bad(a.At, "vm."+vm.Name+".allow", a.Dest())
			}
		}
		for _, pub := range vm.Publish {
			for _, f := range pub.From {
				if f.Addr().Is6() {
					bad(pub.At, "vm."+vm.Name+".publish", f.String())
				}
			}
		}
	}
}
