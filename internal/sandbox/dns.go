package sandbox

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// The internet's DNS server answers for two domains, each name of which
// is served by the internet's servers on Port: names under example.com
// (ListedName among them) at the first address of each family of
// NameAddrs, names under example.net (UnlistedName) at the second. A VM
// whose egress lists ListedName must reach it by name, and neither
// UnlistedName nor a literal address.
const (
	ListedName   = "www.example.com"
	UnlistedName = "www.example.net"
	// NameTTL is the TTL of every answer.
	NameTTL = 60
)

var (
	DNSAddr   = netip.MustParseAddr("203.0.113.53")
	DNSAddr6  = netip.MustParseAddr("2001:db8:113::53")
	NameAddrs = []netip.Addr{
		netip.MustParseAddr("203.0.113.20"), netip.MustParseAddr("2001:db8:113::20"), // example.com
		netip.MustParseAddr("203.0.113.30"), netip.MustParseAddr("2001:db8:113::30"), // example.net
	}
)

// zone is the address of name of the family of qtype (A or AAAA), and
// whether the name exists.
func zone(name string, qtype uint16) (netip.Addr, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	i := 0
	switch {
	case name == "example.com" || strings.HasSuffix(name, ".example.com"):
	case name == "example.net" || strings.HasSuffix(name, ".example.net"):
		i = 2
	default:
		return netip.Addr{}, false
	}
	if qtype == dns.TypeAAAA {
		i++
	}
	return NameAddrs[i], true
}

// ServeDNS starts the internet's DNS server in namespace ns, on port 53 of
// every address, over UDP and TCP, IPv4 and IPv6. It lives until the
// namespace goes.
func ServeDNS(ns string) error {
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			_ = w.WriteMsg(m) // a lost answer is the client's to see
			return
		}
		q := req.Question[0]
		addr, ok := zone(q.Name, q.Qtype)
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: NameTTL}, A: addr.AsSlice()})
		case q.Qtype == dns.TypeAAAA:
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: NameTTL}, AAAA: addr.AsSlice()})
		}
		_ = w.WriteMsg(m)
	})
	return Do(ns, func() error {
		// Sockets belong to the namespace they are made in: make them
		// here, and serve them from any thread.
		for _, network := range []string{"udp4", "udp6"} {
			pc, err := net.ListenPacket(network, ":53")
			if err != nil {
				return fmt.Errorf("DNS server in %s: %w", ns, err)
			}
			go (&dns.Server{PacketConn: pc, Handler: handler}).ActivateAndServe()
		}
		for _, network := range []string{"tcp4", "tcp6"} {
			l, err := net.Listen(network, ":53")
			if err != nil {
				return fmt.Errorf("DNS server in %s: %w", ns, err)
			}
			go (&dns.Server{Listener: l, Handler: handler}).ActivateAndServe()
		}
		return nil
	})
}
