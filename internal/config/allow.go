package config

import (
	"fmt"
	"net/netip"
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

// Allow is one entry of an allow list.
type Allow struct {
	Net   netip.Prefix
	Proto string      // "tcp", "udp", "icmp", or "" for every protocol
	Ports []PortRange // with tcp or udp; none means every port
	At    string      // file:line:col of the entry, for messages and the ruleset's comments
}

// PortRange is a port, or a range of ports (From < To).
type PortRange struct{ From, To uint16 }

func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// String writes the entry as infra.toml does, normalized.
func (a Allow) String() string {
	s := a.Net.String()
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
const allowExample = `e.g. "192.168.1.20", "192.168.1.0/24 tcp 445" or "10.0.0.5 udp 53,123"`

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
			p.errorf(at, "%s: %q %s; write ADDRESS[/BITS] [tcp|udp|icmp [PORTS]], %s", key, s, msg, allowExample)
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
	if strings.Contains(f[0], "/") {
		pfx, err := netip.ParsePrefix(f[0])
		switch {
		case err != nil || !pfx.Addr().Is4():
			return a, "does not start with an IPv4 address or network"
		case pfx.Masked() != pfx:
			return a, fmt.Sprintf("has host bits set; the network is %s", pfx.Masked())
		}
		a.Net = pfx
	} else {
		addr, err := netip.ParseAddr(f[0])
		if err != nil || !addr.Is4() {
			return a, "does not start with an IPv4 address or network"
		}
		a.Net = netip.PrefixFrom(addr, 32)
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
