package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// publish forwards ports of the host's uplink address to a VM, as Incus'
// proxy devices and fly.io's services do: nothing outside the host reaches
// a VM otherwise (but through Tailscale).
//
//	publish = ["tcp 80", "tcp 8443:443", "udp 51820 from 198.51.100.0/24,203.0.113.7"]
//
// Each entry is a protocol (tcp or udp), the host's port, optionally ":" and
// the VM's port (the same by default), and optionally "from" and the
// addresses or networks allowed to connect (everyone by default). Replies
// go back the same way. No two VMs may publish the same host port. With
// IPv6, the port is published on the uplink's IPv6 addresses too, to the
// VM's IPv6 address; a from list names the sources of both families (one
// of IPv4 networks only closes the port to IPv6, and the other way
// round).

// Publish is one entry of a VM's publish list.
type Publish struct {
	Proto    string // "tcp" or "udp"
	HostPort uint16 // on the host's uplink address
	VMPort   uint16 // on the VM's address
	From     []netip.Prefix
	At       string // file:line:col of the entry
}

// String writes the entry as infra.toml does, normalized.
func (p Publish) String() string {
	s := fmt.Sprintf("%s %d", p.Proto, p.HostPort)
	if p.VMPort != p.HostPort {
		s += fmt.Sprintf(":%d", p.VMPort)
	}
	if len(p.From) > 0 {
		from := make([]string, len(p.From))
		for i, f := range p.From {
			from[i] = f.String()
			if f.IsSingleIP() {
				from[i] = f.Addr().String()
			}
		}
		s += " from " + strings.Join(from, ",")
	}
	return s
}

const publishExample = `e.g. "tcp 80", "tcp 8443:443" or "udp 51820 from 198.51.100.0/24"`

// publishList reads a VM's publish list.
func (p *parser) publishList(v *value, key string) []Publish {
	if v == nil {
		return nil
	}
	if v.kind != unstable.Array {
		p.errorf(v.pos, "%s must be a list of ports, %s", key, publishExample)
		return nil
	}
	var out []Publish
	for i, s := range v.list {
		pub, msg := parsePublish(s)
		if msg != "" {
			p.errorf(v.at[i], "%s: %q %s; write tcp|udp HOSTPORT[:VMPORT] [from ADDRESS[/BITS],...], %s", key, s, msg, publishExample)
			continue
		}
		pub.At = fmt.Sprintf("%s:%d:%d", p.file, v.at[i].Line, v.at[i].Col)
		out = append(out, pub)
	}
	return out
}

func parsePublish(s string) (Publish, string) {
	var pub Publish
	f := strings.Fields(s)
	if len(f) != 2 && len(f) != 4 {
		return pub, "is not a publish entry"
	}
	switch pub.Proto = f[0]; pub.Proto {
	case "tcp", "udp":
	default:
		return pub, fmt.Sprintf("has protocol %q; use tcp or udp", f[0])
	}
	host, vm, mapped := strings.Cut(f[1], ":")
	if !mapped {
		vm = host
	}
	hp, err1 := strconv.ParseUint(host, 10, 16)
	vp, err2 := strconv.ParseUint(vm, 10, 16)
	if err1 != nil || err2 != nil || hp == 0 || vp == 0 {
		return pub, fmt.Sprintf("has ports %q; use a port (1 to 65535), or HOSTPORT:VMPORT such as 8443:443", f[1])
	}
	pub.HostPort, pub.VMPort = uint16(hp), uint16(vp)
	if len(f) == 4 {
		if f[2] != "from" {
			return pub, fmt.Sprintf("has %q where \"from\" goes", f[2])
		}
		for _, a := range strings.Split(f[3], ",") {
			pfx, msg := parseNet(a)
			if msg != "" {
				return pub, fmt.Sprintf("has %q after from, which %s", a, msg)
			}
			pub.From = append(pub.From, pfx)
		}
	}
	return pub, ""
}

// parseNet reads an IPv4 or IPv6 address or network.
func parseNet(s string) (netip.Prefix, string) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		switch {
		case err != nil || pfx.Addr().Is4In6():
			return pfx, "is not an IP address or network"
		case pfx.Masked() != pfx:
			return pfx, fmt.Sprintf("has host bits set; the network is %s", pfx.Masked())
		}
		return pfx, ""
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, "is not an IP address or network"
	}
	return netip.PrefixFrom(addr, addr.BitLen()), ""
}

// published rejects a host port that two entries publish, across VMs.
func (p *parser) published() {
	type port struct {
		proto string
		n     uint16
	}
	by := map[port]string{}
	for _, vm := range p.in.VMs {
		for _, pub := range vm.Publish {
			k := port{pub.Proto, pub.HostPort}
			if other, ok := by[k]; ok {
				p.errorf(p.posOf(pub.At), "vm.%s.publish: %s %d is published already, by %s; each host port goes to one VM", vm.Name, pub.Proto, pub.HostPort, other)
				continue
			}
			by[k] = fmt.Sprintf("vm.%s (line %d)", vm.Name, p.posOf(pub.At).Line)
		}
	}
}

// posOf reads back the position of an At string ("file:line:col").
func (p *parser) posOf(at string) Pos {
	var pos Pos
	fmt.Sscanf(strings.TrimPrefix(at, p.file+":"), "%d:%d", &pos.Line, &pos.Col)
	return pos
}
