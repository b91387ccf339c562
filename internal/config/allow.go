package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// VMs reach the internet, and by default nothing else through the uplink:
// not the uplink's own networks (the LAN, its router and their admin
// pages), private and CGNAT ranges, link-local addresses (where clouds
// serve instance metadata and credentials, 169.254.169.254) and other
// special ranges; package firewall has the list. An allow list opens
// some of that again, for every VM ([host]) or for one ([vm.NAME]):
//
//	allow = ["192.168.1.20 tcp 445", "192.168.1.0/24 icmp", "10.0.0.5 udp 53,123", "192.168.1.30"]
//
// Each entry is an IPv4 address or network, then optionally a protocol
// (tcp, udp or icmp), then optionally ports for tcp and udp: one, a range
// (8000-8080) or a list of them separated by commas. Without a protocol
// every protocol and port is allowed. Every VM may always reach its own
// DNS server (dns) on port 53, wherever it is.
//
// Other VMs are out of reach, whatever the list says, but for an opening
// on purpose: "vm:NAME" in a VM's list, with the same protocol and ports,
// lets this VM open connections to the VM called NAME (replies pass), and
// nothing else between the two:
//
//	[vm.web]
//	allow = ["vm:db tcp 6379"]
//
// The host is closed to VMs too (but for a ping to their own gateway).
// An entry naming a VM's own gateway, with a protocol and ports, opens
// those ports of the host to that VM alone, at that address: how a
// monitoring VM reaches the host's metrics endpoint ([host.metrics]):
//
//	[vm.mon]
//	subnet = "10.9.0.0/24"
//	allow = ["10.9.0.1 tcp 9753"]

// Allow is one entry of an allow list.
type Allow struct {
	Net netip.Prefix // for a vm: entry, that VM's address
	VM  string       // the VM a vm:NAME entry opens, "" for an address
	// Gateway: the entry names its VM's own gateway, ports of the host
	// (in [vm.NAME] allow only, with tcp or udp and ports).
	Gateway bool
	Proto   string      // "tcp", "udp", "icmp", or "" for every protocol
	Ports   []PortRange // with tcp or udp; none means every port
	At      string      // file:line:col of the entry, for messages and the ruleset's comments
}

// PortRange is a port, or a range of ports (From < To).
type PortRange struct{ From, To uint16 }

func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// Dest is the entry's destination as infra.toml writes it: vm:NAME, an
// address, or a network.
func (a Allow) Dest() string {
	switch {
	case a.VM != "":
		return "vm:" + a.VM
	case a.Net.IsSingleIP():
		return a.Net.Addr().String()
	}
	return a.Net.String()
}

// String writes the entry as infra.toml does, normalized.
func (a Allow) String() string {
	s := a.Dest()
	if a.Proto != "" {
		s += " " + a.Proto
	}
	if len(a.Ports) > 0 {
		s += " " + a.PortList(",")
	}
	return s
}

// PortList joins the entry's ports with sep.
func (a Allow) PortList(sep string) string {
	ps := make([]string, len(a.Ports))
	for i, r := range a.Ports {
		ps[i] = r.String()
	}
	return strings.Join(ps, sep)
}

// allowExample ends every message about an allow entry.
const allowExample = `e.g. "192.168.1.20", "192.168.1.0/24 tcp 445", "10.0.0.5 udp 53,123" or "vm:db tcp 5432"`

// allowList reads the allow list v (nil when not written) of the table
// whose dotted key is key.
func (p *parser) allowList(v *value, key string) []Allow {
	if v == nil {
		return nil
	}
	if v.kind != unstable.Array {
		p.errorf(v.pos, "%s must be a list of destinations, %s", key, allowExample)
		return nil
	}
	var out []Allow
	for i, s := range v.list {
		at := v.at[i]
		a, msg := parseAllow(s)
		if msg != "" {
			p.errorf(at, "%s: %q %s; write ADDRESS[/BITS] or vm:NAME, then [tcp|udp|icmp [PORTS]], %s", key, s, msg, allowExample)
			continue
		}
		a.At = fmt.Sprintf("%s:%d:%d", p.file, at.Line, at.Col)
		out = append(out, a)
	}
	return out
}

// parseAllow reads one entry, or says what is wrong with it.
func parseAllow(s string) (Allow, string) {
	var a Allow
	f := strings.Fields(s)
	if len(f) == 0 || len(f) > 3 {
		return a, "is not an allow entry"
	}
	if name, ok := strings.CutPrefix(f[0], "vm:"); ok {
		if !isName(name) {
			return a, fmt.Sprintf("names VM %q, which is not a VM name", name)
		}
		a.VM = name // its address is filled in once every VM is read
	} else {
		pfx, msg := parseNet(f[0])
		switch {
		case strings.HasPrefix(msg, "has host bits"):
			return a, msg
		case msg != "":
			return a, "does not start with an IPv4 address or network, or vm:NAME"
		}
		a.Net = pfx
	}
	if len(f) == 1 {
		return a, ""
	}
	switch a.Proto = f[1]; a.Proto {
	case "tcp", "udp":
	case "icmp":
		if len(f) == 3 {
			return a, "gives ports to icmp, which has none"
		}
	default:
		return a, fmt.Sprintf("has protocol %q; use tcp, udp or icmp", f[1])
	}
	if len(f) == 3 {
		for _, part := range strings.Split(f[2], ",") {
			r, ok := parsePorts(part)
			if !ok {
				return a, fmt.Sprintf("has ports %q; use a port (1 to 65535), a range such as 8000-8080, or a list such as 22,80,443", f[2])
			}
			a.Ports = append(a.Ports, r)
		}
	}
	return a, ""
}

func parsePorts(s string) (PortRange, bool) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	from, err1 := strconv.ParseUint(lo, 10, 16)
	to, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || from == 0 || to < from || isRange && to == from {
		return PortRange{}, false
	}
	return PortRange{uint16(from), uint16(to)}, true
}

// openings fills in the address of each vm:NAME entry, once every VM is
// read, and rejects what cannot work: a vm: entry in [host] or naming an
// unknown VM or the VM itself, and an address of a VM's subnet written as
// an address (it would be judged on the uplink, where no VM is).
func (p *parser) openings() {
	subnetOf := func(a Allow) (string, bool) {
		for _, vm := range p.in.VMs {
			if vm.Subnet.Bits() <= a.Net.Bits() && vm.Subnet.Contains(a.Net.Addr()) {
				return vm.Name, true
			}
		}
		return "", false
	}
	rest := func(a Allow) string { // the entry after its destination
		s := a.String()
		_, after, _ := strings.Cut(s, " ")
		if after != "" {
			after = " " + after
		}
		return after
	}
	for _, a := range p.in.Host.Allow {
		if a.VM != "" {
			p.errorf(p.posOf(a.At), "host.allow: vm:%s opens a VM to every other; write it in the table of each VM that connects to %s, e.g. [vm.web] allow = [%q]", a.VM, a.VM, a.String())
			continue
		}
		if name, ok := subnetOf(a); ok {
			p.errorf(p.posOf(a.At), "host.allow: %s is in vm.%s's subnet; VMs reach each other only through an opening in the table of the VM that connects, e.g. allow = [\"vm:%s%s\"] in [vm.OTHER]", a.Dest(), name, name, rest(a))
		}
	}
	for i := range p.in.VMs {
		vm := &p.in.VMs[i]
		key := "vm." + vm.Name + ".allow"
		for j := range vm.Allow {
			a := &vm.Allow[j]
			if a.VM == "" && a.Net == netip.PrefixFrom(vm.Gateway, 32) {
				if a.Proto != "tcp" && a.Proto != "udp" || len(a.Ports) == 0 {
					p.errorf(p.posOf(a.At), "%s: %s is this VM's gateway, the host; name the ports of the host it may reach there, e.g. \"%s tcp %d\" (a ping to its gateway always passes)", key, a.Dest(), a.Dest(), DefaultMetricsPort)
				}
				a.Gateway = true
				continue
			}
			if a.VM == "" {
				if other, ok := p.in.VM(gatewayOf(p.in.VMs, a.Net)); ok {
					p.errorf(p.posOf(a.At), "%s: %s is vm.%s's gateway; a VM reaches the host only at its own gateway, e.g. \"%s%s\"", key, a.Dest(), other.Name, vm.Gateway, rest(*a))
					continue
				}
				if name, ok := subnetOf(*a); ok {
					p.errorf(p.posOf(a.At), "%s: %s is in vm.%s's subnet, which no rule on the uplink reaches; write %q to open it", key, a.Dest(), name, "vm:"+name+rest(*a))
				}
				continue
			}
			target, ok := p.in.VM(a.VM)
			switch {
			case a.VM == vm.Name:
				p.errorf(p.posOf(a.At), "%s: vm:%s is this VM itself; a VM always reaches itself", key, a.VM)
			case !ok && slices.Contains(p.vmNames(), a.VM):
				// declared, but invalid: its own errors say why
			case !ok:
				p.errorf(p.posOf(a.At), "%s: there is no vm.%s in this file%s", key, a.VM, suggest(a.VM, p.vmNames()))
			default:
				a.Net = netip.PrefixFrom(target.Addr, 32)
			}
		}
	}
}

// gatewayOf is the name of the VM whose gateway net is, or "".
func gatewayOf(vms []VM, net netip.Prefix) string {
	for _, vm := range vms {
		if net == netip.PrefixFrom(vm.Gateway, 32) {
			return vm.Name
		}
	}
	return ""
}

func (p *parser) vmNames() []string {
	var out []string
	for _, r := range p.vms {
		out = append(out, r.name)
	}
	return out
}
