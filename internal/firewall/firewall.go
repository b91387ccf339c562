// Package firewall renders the one nftables table the program owns and
// loads it atomically: whole (Replace), or, when only VMs come and go on a
// table the program loaded and nothing changed since, just their elements
// and counters (Update), one transaction either way. The table gives VMs
// NAT to the internet, isolates every VM from every other, stops spoofed
// packets, and lets a VM reach the host only for replies, a ping to its
// own gateway, IPv6's neighbour discovery, and (with an egress list) the
// resolver on its own gateway.
//
// IPv4 and IPv6 are one inet table: every set and rule of IPv4 has its
// IPv6 twin beside it (named ...6), with the same promise. A host with
// ipv6 = false has the twins empty: a VM then sends no IPv6 packet at all,
// as none comes from an address of its own.
//
// "Internet only": through the uplink a VM reaches the internet and by
// default nothing else: not the uplink's own networks (the LAN, its router
// and other hosts), not private (RFC 1918), CGNAT or link-local addresses
// (cloud metadata services at 169.254.169.254 hand out credentials), nor
// Azure's WireServer or other special ranges (Blocked). Its own DNS
// server (dns) stays reachable on port 53 wherever it is, and the allow
// lists of infra.toml ([host] and [vm.NAME] allow) open more, each rule
// commented with the line it comes from.
//
// Tailnet clients (through tailscale0) reach every VM: that is how the
// seed's Tailscale subnet routes arrive. They do not reach the host at its
// addresses in the VM subnets (each 10.N.0.1 gateway lies inside the
// routes it advertises, so a tailnet ACL that opens the VM subnets would
// open the hypervisor too); the host's own tailnet address is the
// operator's business, not this table's. VMs cannot open connections into
// the tailnet unless [host.tailscale] allow_vm_to_tailnet is set, so a
// compromised VM cannot reach the operator's machines; replies to tailnet
// clients always pass. Tailnet addresses are 100.64.0.0/10 and
// fd7a:115c:a1e0::/48.
//
// A VM with an egress list (config.Egress) reaches, on the internet, only
// the addresses its gateway's resolver (package egress) put in the sets
// egress_addrs and egress_addrs6 for it, each for the TTL of its answer:
// those two sets are the only ones the program changes between loads, and
// the watcher leaves their elements alone.
//
// Isolation uses sets, so the number of rules stays the same for 4 VMs or
// 250, where the design's iptables rules grow as N×(N−1).
package firewall

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
)

// Family and Table name the nftables table the program owns.
const (
	Family = "inet"
	Table  = config.Table
)

// ruleset is the whole table. Every line explains itself in `nft list table
// inet microvm`, which is where an operator will read it.
var ruleset = template.Must(template.New("nft").Parse(`table inet {{.Table}} {
	comment "managed by microvm; do not edit: microvm apply replaces it ({{.Hash}})"

	set vm_bridges {
		type ifname
{{- if .VMs}}
		elements = { {{.Elems.Bridges}} }
{{- end}}
	}

	set vm_sources {
		type ifname . ipv4_addr . ether_addr
{{- if .VMs}}
		elements = { {{.Elems.Sources}} }
{{- end}}
	}

	set vm_sources6 {
		type ifname . ipv6_addr . ether_addr
{{- if and .IPv6 .VMs}}
		elements = { {{.Elems.Sources6}} }
{{- end}}
	}

	set vm_gateways {
		type ifname . ipv4_addr
{{- if .VMs}}
		elements = { {{.Elems.Gateways}} }
{{- end}}
	}

	set vm_gateways6 {
		type ifname . ipv6_addr
{{- if and .IPv6 .VMs}}
		elements = { {{.Elems.Gateways6}} }
{{- end}}
	}

	set vm_subnets {
		type ipv4_addr
		flags interval
{{- if .VMs}}
		elements = { {{.Elems.Subnets}} }
{{- end}}
	}

	set vm_subnets6 {
		type ipv6_addr
		flags interval
{{- if and .IPv6 .VMs}}
		elements = { {{.Elems.Subnets6}} }
{{- end}}
	}

	set vm_dns {
		type ifname . ipv4_addr . inet_proto . inet_service
{{- if .DNS}}
		elements = { {{range $i, $d := .DNS}}{{if $i}}, {{end}}"{{$d.Bridge}}" . {{$d.Addr}} . udp . 53, "{{$d.Bridge}}" . {{$d.Addr}} . tcp . 53{{end}} }
{{- end}}
	}

	set vm_dns6 {
		type ifname . ipv6_addr . inet_proto . inet_service
{{- if .DNS6}}
		elements = { {{range $i, $d := .DNS6}}{{if $i}}, {{end}}"{{$d.Bridge}}" . {{$d.Addr}} . udp . 53, "{{$d.Bridge}}" . {{$d.Addr}} . tcp . 53{{end}} }
{{- end}}
	}

	set not_internet {
		type ipv4_addr
		flags interval
		elements = { {{range $i, $p := .Blocked}}{{if $i}}, {{end}}{{$p}}{{end}} }
	}

	set not_internet6 {
		type ipv6_addr
		flags interval
		elements = { {{range $i, $p := .Blocked6}}{{if $i}}, {{end}}{{$p}}{{end}} }
	}

	set vm_openings {
		type ifname . ipv4_addr . inet_proto . inet_service
		flags interval
{{- if .Openings.Ports}}
		elements = { {{range $i, $o := .Openings.Ports}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings6 {
		type ifname . ipv6_addr . inet_proto . inet_service
		flags interval
{{- if .Openings6.Ports}}
		elements = { {{range $i, $o := .Openings6.Ports}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_proto {
		type ifname . ipv4_addr . inet_proto
{{- if .Openings.Protos}}
		elements = { {{range $i, $o := .Openings.Protos}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_proto6 {
		type ifname . ipv6_addr . inet_proto
{{- if .Openings6.Protos}}
		elements = { {{range $i, $o := .Openings6.Protos}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_all {
		type ifname . ipv4_addr
{{- if .Openings.All}}
		elements = { {{range $i, $o := .Openings.All}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_all6 {
		type ifname . ipv6_addr
{{- if .Openings6.All}}
		elements = { {{range $i, $o := .Openings6.All}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_host_openings {
		type ifname . ipv4_addr . inet_proto . inet_service
		flags interval
{{- if .HostOpenings}}
		elements = { {{range $i, $o := .HostOpenings}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}
{{range .VMs}}
	counter drop_from_{{.Name}} {
		comment "what the firewall dropped of what {{.Name}} sent"
	}

	counter drop_to_{{.Name}} {
		comment "what the firewall dropped of what was sent to {{.Name}}"
	}
{{end}}
	map vm_drops_from {
		type ifname : counter
{{- if .VMs}}
		elements = { {{.Elems.DropsFrom}} }
{{- end}}
	}

	map vm_drops_to {
		type ifname : counter
{{- if .VMs}}
		elements = { {{.Elems.DropsTo}} }
{{- end}}
	}

	map published {
		type inet_proto . inet_service : ipv4_addr . inet_service
{{- if .Published}}
		elements = { {{range $i, $p := .Published}}{{if $i}}, {{end}}{{$p.Key}} : {{$p.To}}{{end}} }
{{- end}}
	}

	map published6 {
		type inet_proto . inet_service : ipv6_addr . inet_service
{{- if .Published6}}
		elements = { {{range $i, $p := .Published6}}{{if $i}}, {{end}}{{$p.Key}} : {{$p.To}}{{end}} }
{{- end}}
	}

	set published_from {
		type inet_proto . inet_service . ipv4_addr
		flags interval
{{- if .PublishedFrom}}
		elements = { {{range $i, $p := .PublishedFrom}}{{if $i}}, {{end}}{{$p}}{{end}} }
{{- end}}
	}

	set published_from6 {
		type inet_proto . inet_service . ipv6_addr
		flags interval
{{- if .PublishedFrom6}}
		elements = { {{range $i, $p := .PublishedFrom6}}{{if $i}}, {{end}}{{$p}}{{end}} }
{{- end}}
	}

	set egress_vms {
		type ifname
{{- if .Egress}}
		elements = { {{range $i, $v := .Egress}}{{if $i}}, {{end}}"{{$v.Bridge}}"{{end}} }
{{- end}}
	}

	set egress_resolvers {
		type ifname . ipv4_addr . inet_proto . inet_service
{{- if .Egress}}
		elements = { {{range $i, $v := .Egress}}{{if $i}}, {{end}}"{{$v.Bridge}}" . {{$v.Gateway}} . udp . 53, "{{$v.Bridge}}" . {{$v.Gateway}} . tcp . 53{{end}} }
{{- end}}
	}

	set egress_resolvers6 {
		type ifname . ipv6_addr . inet_proto . inet_service
{{- if and .IPv6 .Egress}}
		elements = { {{range $i, $v := .Egress}}{{if $i}}, {{end}}"{{$v.Bridge}}" . {{$v.Gateway6}} . udp . 53, "{{$v.Bridge}}" . {{$v.Gateway6}} . tcp . 53{{end}} }
{{- end}}
	}

	set egress_addrs {
		type ifname . ipv4_addr
		flags timeout
	}

	set egress_addrs6 {
		type ifname . ipv6_addr
		flags timeout
	}

	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		iifname @vm_bridges iifname . ip saddr . ether saddr != @vm_sources {{.CountFrom}}
		iifname @vm_bridges iifname . ip saddr . ether saddr != @vm_sources drop comment "anti-spoofing: a VM sends only from its own address and MAC"
		iifname @vm_bridges iifname . ip6 saddr . ether saddr != @vm_sources6 {{.CountFrom}}
		iifname @vm_bridges iifname . ip6 saddr . ether saddr != @vm_sources6 drop comment "anti-spoofing: a VM sends only from its own IPv6 address and link-local address, and MAC{{if not .IPv6}} (IPv6 is off: none){{end}}"
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname "{{.Tailscale}}" ip daddr @vm_subnets drop comment "tailnet clients reach the VMs, not the host at its addresses in their subnets (the gateways)"
		iifname "{{.Tailscale}}" ip6 daddr @vm_subnets6 drop comment "the same for IPv6"
		iifname != @vm_bridges accept comment "else this table judges only what VMs send to the host"
		ct state established,related accept comment "replies to the host's own connections"
		iifname . ip daddr @vm_gateways icmp type echo-request accept comment "a VM may ping its own gateway"
		iifname . ip6 daddr @vm_gateways6 icmpv6 type echo-request accept comment "a VM may ping its own gateway (IPv6)"
		iifname @vm_bridges ip6 hoplimit 255 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept comment "neighbour discovery: a VM and its gateway find each other's MAC (on the link only)"
		iifname . ip daddr . meta l4proto . th dport @egress_resolvers accept comment "egress: a VM asks the resolver on its own gateway"
		iifname . ip6 daddr . meta l4proto . th dport @egress_resolvers6 accept comment "egress: a VM asks the resolver on its own gateway (IPv6)"
		iifname . ip daddr . meta l4proto . th dport @vm_host_openings accept comment "a VM reaches the ports of the host its allow list opens at its own gateway"
		{{.CountFrom}}
		drop comment "nothing else from a VM reaches the host (no SSH, no other gateways)"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @vm_bridges oifname @vm_bridges ct state established,related accept comment "replies within an opening between two VMs"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr . meta l4proto . th dport @vm_openings accept comment "openings: vm:NAME PROTO PORTS in the allow list of the VM that connects"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip6 daddr . meta l4proto . th dport @vm_openings6 accept comment "openings: vm:NAME PROTO PORTS in the allow list of the VM that connects (IPv6)"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr . meta l4proto @vm_openings_proto accept comment "openings of a protocol, every port (vm:NAME icmp, vm:NAME tcp)"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip6 daddr . meta l4proto @vm_openings_proto6 accept comment "openings of a protocol, every port (IPv6)"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr @vm_openings_all accept comment "openings of every protocol (vm:NAME)"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip6 daddr @vm_openings_all6 accept comment "openings of every protocol (IPv6)"
		iifname @vm_bridges oifname @vm_bridges counter name iifname map @vm_drops_from counter name oifname map @vm_drops_to comment "{{.Counted}}"
		iifname @vm_bridges oifname @vm_bridges drop comment "isolation: no VM reaches another, but through an opening"
		ct state established,related accept comment "replies"
		oifname @vm_bridges ct status dnat accept comment "the internet reaches the ports a VM publishes (publish)"
		iifname "{{.Tailscale}}" oifname @vm_bridges accept comment "tailnet clients reach every VM"
{{- if .AllowVMToTailnet}}
		iifname @vm_bridges oifname "{{.Tailscale}}" ip daddr {{.TailscaleRange}} accept comment "VMs may open connections into the tailnet (allow_vm_to_tailnet)"
		iifname @vm_bridges oifname "{{.Tailscale}}" ip6 daddr {{.TailscaleRange6}} accept comment "VMs may open connections into the tailnet (allow_vm_to_tailnet, IPv6)"
{{- end}}
		iifname @vm_bridges oifname "{{.Uplink}}" iifname . ip daddr . meta l4proto . th dport @vm_dns accept comment "each VM reaches its own DNS server (dns), wherever it is"
		iifname @vm_bridges oifname "{{.Uplink}}" iifname . ip6 daddr . meta l4proto . th dport @vm_dns6 accept comment "each VM reaches its own DNS server (dns), wherever it is (IPv6)"
{{- range .Allow}}
		iifname {{.Bridge}} oifname "{{$.Uplink}}" {{.Family}} daddr {{.Net}}{{if .Proto}} meta l4proto {{.Proto}}{{end}}{{if .Ports}} th dport { {{.Ports}} }{{end}} accept comment "allow {{.Text}} ({{.Who}})"
{{- end}}
		iifname @vm_bridges oifname "{{.Uplink}}" ip daddr @not_internet {{.CountFrom}}
		iifname @vm_bridges oifname "{{.Uplink}}" ip daddr @not_internet drop comment "internet only: not the uplink's networks, private, CGNAT, link-local (cloud metadata) or special ranges"
		iifname @vm_bridges oifname "{{.Uplink}}" ip6 daddr @not_internet6 {{.CountFrom}}
		iifname @vm_bridges oifname "{{.Uplink}}" ip6 daddr @not_internet6 drop comment "internet only: not the uplink's IPv6 networks, unique local (other hosts' VMs), link-local, multicast or special ranges"
		iifname @egress_vms oifname "{{.Uplink}}" iifname . ip daddr @egress_addrs accept comment "egress: a VM with an egress list reaches the addresses of its names, while their TTL lasts"
		iifname @egress_vms oifname "{{.Uplink}}" iifname . ip6 daddr @egress_addrs6 accept comment "egress: the same for IPv6"
		iifname @egress_vms oifname "{{.Uplink}}" {{.CountFrom}}
		iifname @egress_vms oifname "{{.Uplink}}" drop comment "egress: and nothing else on the internet, no other DNS server"
		iifname @vm_bridges oifname "{{.Uplink}}" accept comment "VMs reach the internet"
		iifname @vm_bridges {{.CountFrom}}
		iifname @vm_bridges drop comment "VMs reach nothing else: {{if not .AllowVMToTailnet}}not the tailnet, {{end}}not other host networks"
		oifname @vm_bridges counter name oifname map @vm_drops_to comment "{{.Counted}}"
		oifname @vm_bridges drop comment "nobody else opens connections into a VM"
	}

	chain publish {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "{{.Uplink}}" fib daddr type local meta l4proto . th dport . ip saddr @published_from dnat ip to meta l4proto . th dport map @published comment "publish: the host's ports a VM publishes go to the VM"
		iifname "{{.Uplink}}" fib daddr type local meta l4proto . th dport . ip6 saddr @published_from6 dnat ip6 to meta l4proto . th dport map @published6 comment "publish: the same on the host's IPv6 addresses"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "{{.Uplink}}" ip saddr @vm_subnets masquerade comment "NAT: VMs share the uplink's address"
{{- if .NAT66}}
		oifname "{{.Uplink}}" ip6 saddr @vm_subnets6 masquerade comment "NAT66: VMs share the uplink's IPv6 address (their prefix is a unique local one)"
{{- end}}
{{- if .AllowVMToTailnet}}
		oifname "{{.Tailscale}}" ip saddr @vm_subnets masquerade comment "VMs reach the tailnet as the host, whose tailnet address peers know"
		oifname "{{.Tailscale}}" ip6 saddr @vm_subnets6 masquerade comment "the same for IPv6"
{{- end}}
	}
}
`))

// The sets the egress resolver fills, each element a VM's bridge and an
// address of one of its names, with the answer's TTL as its timeout.
const (
	EgressSet  = "egress_addrs"
	EgressSet6 = "egress_addrs6"
)

// dynamicSets are the sets whose elements change between loads.
var dynamicSets = []string{EgressSet, EgressSet6}

// Blocked are the destinations beyond the internet: what no VM reaches
// through the uplink unless an allow list says so, besides the uplink's own
// networks. The documentation ranges (192.0.2.0/24, 198.51.100.0/24,
// 203.0.113.0/24) are left out: nothing real is there, and the sandbox's
// "internet" uses them.
var Blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),  // "this network"
	netip.MustParsePrefix("10.0.0.0/8"), // private (RFC 1918)
	// CGNAT (RFC 6598) and the tailnet's addresses; Alibaba Cloud's
	// metadata service is at 100.100.100.200.
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"), // loopback
	// Azure's WireServer (the VM agent's and extensions' endpoint, which
	// hands out certificates and settings, and Azure's DNS): a public
	// address that answers only inside Azure.
	netip.MustParsePrefix("168.63.129.16/32"),
	// Link-local: the instance metadata services of AWS, GCP
	// (metadata.google.internal), Azure, Oracle, DigitalOcean, OpenStack
	// and Hetzner at 169.254.169.254, which hand out credentials; AWS's
	// time and DNS (169.254.169.123, .253) and ECS credentials
	// (169.254.170.2), Tencent's metadata (169.254.0.23), Scaleway's
	// (169.254.42.42). AWS's IPv6 metadata (fd00:ec2::254) is not in this
	// list: every IPv6 packet from a VM is dropped.
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"), // private (RFC 1918)
	// IETF protocol assignments; Oracle Cloud's metadata is also at
	// 192.0.0.192.
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"), // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking, often used inside networks
	netip.MustParsePrefix("224.0.0.0/3"),    // multicast, reserved, broadcast
}

// Blocked6 are IPv6's: the special ranges of IANA's registry that are not
// the internet. The documentation ranges (2001:db8::/32, 3fff::/20) are
// left out, as IPv4's are: the sandbox's "internet" uses them.
var Blocked6 = []netip.Prefix{
	netip.MustParsePrefix("::/96"),          // unspecified, loopback, IPv4-compatible
	netip.MustParsePrefix("::ffff:0:0/96"),  // IPv4-mapped: IPv4's blocked ranges in disguise
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64: IPv4, the private ranges among it, through a translator
	netip.MustParsePrefix("64:ff9b:1::/48"), // NAT64 for local use
	netip.MustParsePrefix("100::/64"),       // discard
	netip.MustParsePrefix("2001::/23"),      // IETF protocol assignments (Teredo among them)
	netip.MustParsePrefix("2002::/16"),      // 6to4: IPv4 again
	netip.MustParsePrefix("5f00::/16"),      // segment routing identifiers
	netip.MustParsePrefix("fc00::/7"),       // unique local: other hosts' VMs, cloud metadata (fd00:ec2::254), LANs
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("fec0::/10"),      // site-local (deprecated)
	netip.MustParsePrefix("ff00::/8"),       // multicast
}

// Ruleset is the table for the model and this host's uplink, as nft text.
// The uplink's networks are read from the host; if they cannot be, the
// table fails closed: VMs reach nothing through the uplink.
func Ruleset(in *config.Infra) string {
	nets, err := hostnet.UplinkNetworks(in.Host.Uplink)
	if err != nil {
		nets = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	}
	return Render(in, nets)
}

// allowRule is one allow entry as the template writes it. Its comment
// says what it is from the model alone, never where the file has it: a
// rule must stay the same rule when lines move, and no path of the host
// goes into the ruleset.
type allowRule struct {
	Bridge string // "@vm_bridges" for every VM, or one VM's bridge in quotes
	Family string // "ip" or "ip6"
	Net    netip.Prefix
	Proto  string // "tcp", "udp", "icmp" or "ipv6-icmp"
	Ports  string // "22, 8000-8080"
	Text   string // the entry as infra.toml writes it, normalized
	Who    string // "every VM" or the VM's name
}

// openings are the vm:NAME entries of the VMs' allow lists, as the
// elements of the sets that let them through: by source bridge,
// destination address, protocol and ports.
type openings struct {
	Ports  []string // "br-web" . 10.6.0.2 . tcp . 6379
	Protos []string // "br-web" . 10.6.0.2 . icmp
	All    []string // "br-web" . 10.6.0.2
}

// openingsOf writes the openings of vms for IPv4, or for IPv6 (to the
// other VM's IPv6 address, icmp meaning ICMPv6).
func openingsOf(vms []config.VM, ipv6 bool) openings {
	var o openings
	for _, vm := range vms {
		for _, a := range vm.Allow {
			to := a.Net
			if ipv6 {
				to = a.Net6
			}
			if a.VM == "" || !to.IsValid() {
				continue
			}
			head := fmt.Sprintf("%q . %s", vm.Bridge, to.Addr())
			switch {
			case a.Proto == "":
				o.All = append(o.All, head)
			case len(a.Ports) == 0:
				o.Protos = append(o.Protos, head+" . "+l4proto(a.Proto, ipv6))
			default:
				for _, r := range a.Ports {
					o.Ports = append(o.Ports, fmt.Sprintf("%s . %s . %s", head, a.Proto, r))
				}
			}
		}
	}
	return o
}

// hostOpeningsOf are the entries of the VMs' allow lists that name their
// own gateway: ports of the host each VM may reach there, as elements of
// the set the input chain accepts (by bridge, gateway, protocol and
// ports). Config requires a protocol and ports of them.
func hostOpeningsOf(vms []config.VM) []string {
	var out []string
	for _, vm := range vms {
		for _, a := range vm.Allow {
			if !a.Gateway {
				continue
			}
			for _, r := range a.Ports {
				out = append(out, fmt.Sprintf("%q . %s . %s . %s", vm.Bridge, a.Net.Addr(), a.Proto, r))
			}
		}
	}
	return out
}

// l4proto is the protocol of an allow entry as nft names it: icmp is
// ICMPv6 for IPv6.
func l4proto(proto string, ipv6 bool) string {
	if proto == "icmp" && ipv6 {
		return "ipv6-icmp"
	}
	return proto
}

// dnsServer is a VM's own DNS server, which it reaches on port 53.
type dnsServer struct {
	Bridge string
	Addr   netip.Addr
}

// dnsOf lists the DNS servers of the VMs without an egress list (those ask
// their gateway, and reach no other), of IPv4 or IPv6.
func dnsOf(vms []config.VM, ipv6 bool) []dnsServer {
	var out []dnsServer
	for _, vm := range vms {
		a, err := netip.ParseAddr(vm.DNS)
		if err != nil || vm.HasEgress() || a.Is6() != ipv6 {
			continue
		}
		out = append(out, dnsServer{vm.Bridge, a})
	}
	return out
}

// egressOf lists the VMs with an egress list.
func egressOf(vms []config.VM) []config.VM {
	var out []config.VM
	for _, vm := range vms {
		if vm.HasEgress() {
			out = append(out, vm)
		}
	}
	return out
}

// Drops are counted per VM, for its metrics (package metrics): two named
// counters each, drop_from_NAME (what it sent) and drop_to_NAME (what was
// sent to it), reached through two maps keyed by its bridge, so the rules
// stay as few whatever the number of VMs. Each rule that drops what a VM
// sends or receives has a rule just before it with the same match that
// counts: the drop itself stays a rule of its own, so a map that lacked a
// bridge (a lookup that fails ends a rule) would skip a count, never a
// drop.
const counted = "counted per VM: what the next rule drops"

// CounterFrom and CounterTo name the counters of what the firewall dropped
// of what VM name sent, and of what was sent to it.
func CounterFrom(name string) string { return "drop_from_" + name }
func CounterTo(name string) string   { return "drop_to_" + name }

// published is one published port as the template writes it.
type published struct {
	Key, To string // "tcp . 80" : "10.5.0.2 . 80"
}

// publishedOf writes the published ports of vms for IPv4, or for IPv6 (to
// the VMs' IPv6 addresses, from the IPv6 sources of each from list).
func publishedOf(vms []config.VM, ipv6 bool) (pubs []published, from []string) {
	all := netip.MustParsePrefix("0.0.0.0/0")
	if ipv6 {
		all = netip.MustParsePrefix("::/0")
	}
	for _, vm := range vms {
		to := vm.Addr
		if ipv6 {
			to = vm.Addr6
		}
		if !to.IsValid() {
			continue
		}
		for _, p := range vm.Publish {
			key := fmt.Sprintf("%s . %d", p.Proto, p.HostPort)
			pubs = append(pubs, published{key, fmt.Sprintf("%s . %d", to, p.VMPort)})
			srcs := p.From
			if len(srcs) == 0 {
				srcs = []netip.Prefix{all}
			}
			for _, s := range srcs {
				if s.Addr().Is6() == ipv6 {
					from = append(from, key+" . "+s.String())
				}
			}
		}
	}
	return pubs, from
}

// Render is the table for the model, with uplinkNets the networks of its
// uplink.
func Render(in *config.Infra, uplinkNets []netip.Prefix) string {
	var allow []allowRule
	add := func(bridge, who string, list []config.Allow) {
		for _, a := range list {
			if a.VM != "" || a.Gateway {
				continue // openings to VMs and to the host are sets, not rules on the uplink
			}
			family := "ip"
			if a.Net.Addr().Is6() {
				family = "ip6"
			}
			allow = append(allow, allowRule{bridge, family, a.Net, l4proto(a.Proto, family == "ip6"), a.PortList(", "), a.String(), who})
		}
	}
	add("@vm_bridges", "every VM", in.Host.Allow)
	for _, vm := range in.VMs {
		add(`"`+vm.Bridge+`"`, vm.Name, vm.Allow)
	}
	blocked, blocked6 := slices.Clone(Blocked), slices.Clone(Blocked6)
	for _, n := range uplinkNets {
		if n.Addr().Is6() {
			blocked6 = append(blocked6, n)
		} else {
			blocked = append(blocked, n)
		}
	}
	pubs, from := publishedOf(in.VMs, false)
	pubs6, from6 := publishedOf(in.VMs, true)
	data := struct {
		Table, Uplink, Tailscale, Hash  string
		TailscaleRange, TailscaleRange6 string
		AllowVMToTailnet, IPv6, NAT66   bool
		VMs, Egress                     []config.VM
		DNS, DNS6                       []dnsServer
		Blocked, Blocked6               []netip.Prefix
		Allow                           []allowRule
		Openings, Openings6             openings
		Published, Published6           []published
		PublishedFrom, PublishedFrom6   []string
		HostOpenings                    []string
		CountFrom, Counted              string
		Elems                           vmElements
	}{Table, in.Host.Uplink, config.Tailscale, "", config.TailscaleRange.String(), config.TailscaleRange6.String(),
		in.Host.Tailscale.AllowVMToTailnet, in.Host.IPv6, in.Host.NAT66, in.VMs, egressOf(in.VMs),
		dnsOf(in.VMs, false), dnsOf(in.VMs, true), merge(blocked), merge(blocked6), allow,
		openingsOf(in.VMs, false), openingsOf(in.VMs, true), pubs, pubs6, from, from6, hostOpeningsOf(in.VMs),
		`counter name iifname map @vm_drops_from comment "` + counted + `"`, counted, elementsOf(in.VMs)}
	// Render once without the hash, hash that, and put it in the comment,
	// the first "()" of the text. An Update changes elements and counters,
	// not the comment, so the hash names the ruleset last loaded whole:
	// plan reads it only to tell a repair from an update, never to judge
	// the table.
	text := execute(data)
	sum := sha256.Sum256([]byte(text))
	return strings.Replace(text, "()", "(sha256:"+hex.EncodeToString(sum[:8])+")", 1)
}

// vmElements are the elements of the sets and maps with one or two per
// VM, joined here rather than in the template: its range formats every
// address through reflection, a few milliseconds of every plan at 250 VMs.
type vmElements struct {
	Bridges, Sources, Sources6, Gateways, Gateways6, Subnets, Subnets6, DropsFrom, DropsTo string
}

func elementsOf(vms []config.VM) vmElements {
	join := func(f func(vm *config.VM) string) string {
		var b strings.Builder
		for i := range vms {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(f(&vms[i]))
		}
		return b.String()
	}
	q := strconv.Quote
	return vmElements{
		Bridges: join(func(v *config.VM) string { return q(v.Bridge) }),
		Sources: join(func(v *config.VM) string { return q(v.Bridge) + " . " + v.Addr.String() + " . " + v.MAC.String() }),
		Sources6: join(func(v *config.VM) string {
			return q(v.Bridge) + " . " + v.Addr6.String() + " . " + v.MAC.String() + ", " + q(v.Bridge) + " . " + v.LinkLocal6.String() + " . " + v.MAC.String()
		}),
		Gateways:  join(func(v *config.VM) string { return q(v.Bridge) + " . " + v.Gateway.String() }),
		Gateways6: join(func(v *config.VM) string { return q(v.Bridge) + " . " + v.Gateway6.String() }),
		Subnets:   join(func(v *config.VM) string { return v.Subnet.String() }),
		Subnets6:  join(func(v *config.VM) string { return v.Subnet6.String() }),
		DropsFrom: join(func(v *config.VM) string { return q(v.Bridge) + " : " + q(CounterFrom(v.Name)) }),
		DropsTo:   join(func(v *config.VM) string { return q(v.Bridge) + " : " + q(CounterTo(v.Name)) }),
	}
}

// execute runs the template. Its text is fixed and its data plain values,
// so an error is a bug in this file (every test renders it): it panics
// rather than let a partial table be loaded.
func execute(data any) string {
	var b bytes.Buffer
	if err := ruleset.Execute(&b, data); err != nil {
		panic("firewall: rendering the ruleset: " + err.Error())
	}
	return b.String()
}

// merge sorts prefixes and drops those inside another: an nftables
// interval set refuses overlapping elements.
func merge(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// Replace loads ruleset as one transaction: the table is created if it is
// missing, deleted and defined again, so there is never a moment with a half
// table and nothing outside it changes. With Host set, it also records the
// ruleset in Host's run directory as the table the watcher keeps (see
// Watcher), under the lock the watcher takes, so the watcher never takes
// this change for an edit.
type Replace struct {
	Ruleset string
	Why     string   // "create", "update", "repair (edited by hand)"
	Changes []string // what differs, as State.Changes says
	Host    *config.Host
	Egress  []EgressVM // what the resolver serves for this ruleset, recorded with it
}

func (r *Replace) String() string {
	return fmt.Sprintf("nft -f microvm.nft  # %s table %s %s%s (plan -v shows it)", r.Why, Family, Table, listChanges(r.Changes))
}

// listChanges shows the first few changes, after a colon.
func listChanges(changes []string) string {
	if len(changes) == 0 {
		return ""
	}
	const show = 3
	s := ": " + strings.Join(changes[:min(show, len(changes))], "; ")
	if len(changes) > show {
		s += fmt.Sprintf("; and %d more", len(changes)-show)
	}
	return s
}

func (r *Replace) Apply() error {
	if r.Host == nil {
		return load(r.Ruleset)
	}
	unlock, err := lockRecord(*r.Host)
	if err != nil {
		return err
	}
	defer unlock()
	stamp, err := loadStamped(*r.Host, r.Ruleset)
	if err != nil {
		return err
	}
	return record(*r.Host, r.Ruleset, r.Egress, stamp)
}

// record writes what a load of ruleset leaves for the others, under the
// record lock: the egress lists it serves (for the resolver), the ruleset
// (for the watcher), and the stamp (for the next plan).
func record(h config.Host, ruleset string, egress []EgressVM, stamp string) error {
	if err := writeEgressRecord(h, egress); err != nil {
		return err
	}
	if err := writeRecord(h, ruleset); err != nil {
		return err
	}
	writeStamp(h, stamp)
	return nil
}

// load replaces the table with ruleset in one transaction.
func load(ruleset string) error {
	return nft(fmt.Sprintf("table %s %s {}\ndelete table %s %s\n%s", Family, Table, Family, Table, ruleset), "-f", "-")
}

// Delete removes the table: used when the program is asked to remove the
// whole host part.
type Delete struct{}

func (Delete) String() string { return fmt.Sprintf("nft delete table %s %s", Family, Table) }
func (Delete) Apply() error {
	return nft(fmt.Sprintf("table %s %s {}\ndelete table %s %s\n", Family, Table, Family, Table), "-f", "-")
}

// observed is what Diff reads of the host: the loaded table (nil when
// there is none), the wanted one as nft reads it back (only read when
// there is a table to compare it with), and other firewalls that would
// drop VM traffic.
type observed struct {
	// last is the ruleset the program last loaded, when the nftables
	// generation proves the table is still exactly that (lastLoaded):
	// then loaded and wanted are not read.
	last           *string
	loaded, wanted *State
	// recorded is the ruleset the program last loaded here, as recorded
	// for the watcher ("" when none is): read with loaded.
	recorded  string
	conflicts []string
	listening map[string]bool // the host's own ports, as "tcp 22"
}

// Diff returns the action that makes the loaded table match the model, or
// nothing when it already does, and warns of other firewalls in the way.
// It compares the two tables rule by rule (see State), so any edit by hand
// shows, and says what changed.
func Diff(in *config.Infra) (action.Diff, error) {
	ruleset := Ruleset(in)
	o := observed{conflicts: Conflicts(), listening: listening(in)}
	if last, ok := lastLoaded(in.Host); ok {
		o.last = &last
		return diff(in, ruleset, o), nil
	}
	var err error
	if o.loaded, err = Current(); err != nil {
		return action.Diff{}, err
	}
	if o.loaded != nil {
		if o.wanted, err = wanted(ruleset); err != nil {
			return action.Diff{}, err
		}
		// Unreadable, it only means a change is called an update.
		o.recorded, _ = readRecord(in.Host)
	}
	return diff(in, ruleset, o), nil
}

// diff compares ruleset, the table for in, with what was read of the host.
func diff(in *config.Infra, ruleset string, o observed) action.Diff {
	d := action.Diff{Warnings: append(o.conflicts, publishWarnings(in, o.listening)...), Notes: publishNotes(in)}
	if o.last != nil {
		if *o.last == ruleset {
			return d
		}
		have, want := parseRendered(*o.last), parseRendered(ruleset)
		changes := changesOf(have, want, true)
		if script, ok := deltaOf(have, want); ok {
			d.Setup = []action.Action{&Update{Old: *o.last, Ruleset: ruleset, Script: script, Changes: changes, Host: &in.Host, Egress: EgressOf(in)}}
		} else {
			d.Setup = []action.Action{&Replace{Ruleset: ruleset, Why: "update", Changes: changes, Host: &in.Host, Egress: EgressOf(in)}}
		}
		return d
	}
	if o.loaded == nil {
		d.Setup = []action.Action{&Replace{Ruleset: ruleset, Why: "create", Host: &in.Host, Egress: EgressOf(in)}}
		return d
	}
	changes := o.loaded.Changes(o.wanted)
	if len(changes) == 0 {
		return d
	}
	// The program loaded this very ruleset, whole (the hash in the
	// table's comment) or by an Update (the record): someone else changed
	// it since.
	why := "update"
	if o.loaded.Hash == summarize(ruleset).Hash || o.recorded == ruleset {
		why = "repair (edited by hand)"
	}
	d.Setup = []action.Action{&Replace{Ruleset: ruleset, Why: why, Changes: changes, Host: &in.Host, Egress: EgressOf(in)}}
	return d
}

// summary is what the rendered ruleset says of itself: the hash in its
// comment, and how many rules and set elements it has.
type summary struct {
	Hash     string
	Rules    int
	Elements int
}

func summarize(ruleset string) summary {
	var s summary
	if i := strings.Index(ruleset, "(sha256:"); i >= 0 {
		s.Hash = ruleset[i+1 : i+1+len("sha256:")+16]
	}
	inChain := false
	for _, line := range strings.Split(ruleset, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "chain "):
			inChain = true
		case line == "}":
			inChain = false
		case strings.HasPrefix(line, "elements = {"):
			s.Elements += strings.Count(line, ",") + 1
		case inChain && line != "" && !strings.HasPrefix(line, "type "):
			s.Rules++
		}
	}
	return s
}

// Current reads the loaded table in canonical form, or returns nil when
// there is none. The hash comes from the text listing, as nft 1.0.6's JSON
// leaves out the table's comment.
func Current() (*State, error) {
	s, err := loaded()
	if err != nil || s == nil {
		return nil, err
	}
	text, err := exec.Command("nft", "list", "table", Family, Table).Output()
	if err != nil {
		return nil, fmt.Errorf("reading nftables table %s %s: %w", Family, Table, cmdErr(err))
	}
	if i := bytes.Index(text, []byte("(sha256:")); i >= 0 {
		if j := bytes.IndexByte(text[i:], ')'); j > 0 {
			s.Hash = string(text[i+1 : i+j])
		}
	}
	return s, nil
}

func nft(stdin string, args ...string) error {
	cmd := exec.Command("nft", args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft %s: %s: %w", strings.Join(args, " "), strings.TrimSpace(string(out)), err)
	}
	return nil
}

func cmdErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return fmt.Errorf("%s", strings.TrimSpace(string(ee.Stderr)))
	}
	if err, ok := err.(*exec.Error); ok && err.Err == exec.ErrNotFound {
		return fmt.Errorf("the nft command is not installed; install the nftables package")
	}
	return err
}
