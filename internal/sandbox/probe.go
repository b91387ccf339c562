package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/simple-microvm-infra/microvm/internal/check"
)

// Port is where the sandbox's servers listen, for TCP and UDP alike.
const Port = 8000

// Timeout is how long a probe waits before it calls a path blocked. The
// firewall drops silently, so a blocked probe always waits this long.
var Timeout = 2 * time.Second

// Prober sends probes from the sandbox's namespaces: from a VM's stand-in,
// or from the host namespace for check.Host.
type Prober struct{ S *Sandbox }

func (p Prober) ns(from string) string {
	switch from {
	case check.Host:
		return p.S.Host
	case check.Outside:
		return p.S.Internet
	}
	return p.S.VMs[from]
}

func (p Prober) TCP(from string, to netip.AddrPort) check.Result { return TCP(p.ns(from), to) }
func (p Prober) UDP(from string, to netip.AddrPort) check.Result { return UDP(p.ns(from), to) }
func (p Prober) Ping(from string, to netip.Addr) check.Result    { return Ping(p.ns(from), to) }

// Resolve asks the resolver a stand-in's guest would ask: its VM's
// nameserver (the gateway, with an egress list).
func (p Prober) Resolve(from, name string, ipv6 bool) ([]netip.Addr, error) {
	vm, ok := p.S.in.VM(from)
	if !ok {
		return nil, fmt.Errorf("resolving from %s: no such VM", from)
	}
	server, err := netip.ParseAddr(vm.Nameserver())
	if err != nil {
		return nil, fmt.Errorf("resolving from %s: %w", from, err)
	}
	return Resolve(p.ns(from), server, name, ipv6)
}

// Resolve sends one DNS query for name (AAAA for ipv6, else A) from
// namespace ns to server, and returns the addresses of its answer.
func Resolve(ns string, server netip.Addr, name string, ipv6 bool) ([]netip.Addr, error) {
	qtype := dns.TypeA
	if ipv6 {
		qtype = dns.TypeAAAA
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	var in *dns.Msg
	err := Do(ns, func() error {
		c := &dns.Client{Timeout: Timeout}
		var err error
		in, _, err = c.Exchange(m, netip.AddrPortFrom(server, 53).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("resolving %s at %s: %w", name, server, err)
	}
	if in.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("resolving %s at %s: %s", name, server, dns.RcodeToString[in.Rcode])
	}
	var addrs []netip.Addr
	for _, rr := range in.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolving %s at %s: no address", name, server)
	}
	return addrs, nil
}

// Serve starts a TCP and a UDP server on port in namespace ns, each on
// IPv4 and IPv6, that answer every client with "seen ADDR", the address
// they saw it come from. The servers live until the namespace is deleted.
func Serve(ns string, port int) error {
	return Do(ns, func() error {
		if err := serve4(ns, port); err != nil {
			return err
		}
		return serve6(ns, port)
	})
}

// listen opens the TCP and UDP sockets of Serve for network family "4"
// or "6", and answers TCP clients with the address they came from.
func listen(ns, fam string, port int) (net.PacketConn, func(), error) {
	tl, err := net.Listen("tcp"+fam, fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, nil, fmt.Errorf("listening in %s: %w", ns, err)
	}
	ul, err := net.ListenPacket("udp"+fam, fmt.Sprintf(":%d", port))
	if err != nil {
		tl.Close()
		return nil, nil, fmt.Errorf("listening in %s: %w", ns, err)
	}
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "seen %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	return ul, func() { tl.Close(); ul.Close() }, nil
}

// serve4 is Serve's IPv4 half, on the calling thread's namespace.
func serve4(ns string, port int) error {
	ul, closeAll, err := listen(ns, "4", port)
	if err != nil {
		return err
	}
	// Answer from the address the client asked (the namespace has
	// several: a router's, the internet server's, the metadata
	// server's), or NAT on the way back would not recognize the reply.
	pc := ipv4.NewPacketConn(ul)
	if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
		closeAll()
		return fmt.Errorf("listening in %s: %w", ns, err)
	}
	go func() {
		buf := make([]byte, 512)
		for {
			_, cm, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var reply *ipv4.ControlMessage
			if cm != nil {
				reply = &ipv4.ControlMessage{Src: cm.Dst}
			}
			// A lost answer is what the prober sees as blocked, which is its to judge.
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("seen %s\n", from.(*net.UDPAddr).IP)), reply, from)
		}
	}()
	return nil
}

// serve6 is Serve's IPv6 half, on the calling thread's namespace.
func serve6(ns string, port int) error {
	ul, closeAll, err := listen(ns, "6", port)
	if err != nil {
		return err
	}
	pc := ipv6.NewPacketConn(ul)
	if err := pc.SetControlMessage(ipv6.FlagDst, true); err != nil {
		closeAll()
		return fmt.Errorf("listening in %s: %w", ns, err)
	}
	go func() {
		buf := make([]byte, 512)
		for {
			_, cm, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var reply *ipv6.ControlMessage
			if cm != nil {
				reply = &ipv6.ControlMessage{Src: cm.Dst}
			}
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("seen %s\n", from.(*net.UDPAddr).IP)), reply, from)
		}
	}()
	return nil
}

// family is "4" or "6", for the networks of net's dialers: tcp4, udp6.
func family(a netip.Addr) string {
	if a.Is4() {
		return "4"
	}
	return "6"
}

// TCP connects from namespace ns to addr:port.
func TCP(ns string, to netip.AddrPort) check.Result { return TCPFrom(ns, netip.Addr{}, to) }

// TCPFrom connects from a given local address (for spoofing tests); the zero
// Addr lets the kernel choose.
func TCPFrom(ns string, local netip.Addr, to netip.AddrPort) check.Result {
	var r check.Result
	err := Do(ns, func() error {
		d := net.Dialer{Timeout: Timeout}
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, err := d.Dial("tcp"+family(to.Addr()), to.String())
		if err != nil {
			r.Reached = refused(err)
			r.Refused = r.Reached
			r.Err = err
			return nil
		}
		r.Reached = true
		// Reached is the result; who the listener saw is a detail, missing
		// when the deadline cut it short.
		_ = c.SetDeadline(time.Now().Add(Timeout))
		line, _ := bufio.NewReader(io.LimitReader(c, check.MaxSeen)).ReadString('\n')
		r.SeenAs = strings.TrimSpace(strings.TrimPrefix(line, "seen "))
		return c.Close()
	})
	if err != nil {
		r.Err = err
	}
	return r
}

// UDP sends one datagram from namespace ns to addr:port and waits for the
// answer.
func UDP(ns string, to netip.AddrPort) check.Result {
	var r check.Result
	err := Do(ns, func() error {
		c, err := net.Dial("udp"+family(to.Addr()), to.String())
		if err != nil {
			r.Err = err
			return nil
		}
		defer c.Close()
		// A datagram that was not sent gets no answer: the read below says so.
		_ = c.SetDeadline(time.Now().Add(Timeout))
		_, _ = c.Write([]byte("probe"))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			r.Reached = refused(err)
			r.Refused = r.Reached
			r.Err = err
			return nil
		}
		r.Reached = true
		r.SeenAs = strings.TrimSpace(strings.TrimPrefix(string(buf[:n]), "seen "))
		return nil
	})
	if err != nil {
		r.Err = err
	}
	return r
}

// Ping sends one ICMP (or ICMPv6) echo request from namespace ns and waits
// for the reply.
func Ping(ns string, to netip.Addr) check.Result {
	var r check.Result
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var echo, echoReply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if to.Is6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		echo, echoReply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	err := Do(ns, func() error {
		c, err := icmp.ListenPacket(network, laddr)
		if err != nil {
			return fmt.Errorf("opening ICMP socket: %w", err)
		}
		defer c.Close()
		id := os.Getpid()&0x7fff ^ int(time.Now().UnixNano()&0x7fff)
		// For ICMPv6 the kernel computes the checksum.
		msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("microvm")}}
		b, _ := msg.Marshal(nil) // an echo request with a body always encodes
		if _, err := c.WriteTo(b, &net.IPAddr{IP: to.AsSlice()}); err != nil {
			r.Err = err
			return nil
		}
		deadline := time.Now().Add(Timeout)
		_ = c.SetReadDeadline(deadline) // on a fresh socket it cannot fail
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				r.Err = err
				return nil
			}
			reply, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil {
				continue
			}
			// The raw socket sees every ICMP packet in the namespace: keep
			// only the answer to this probe.
			if echo, ok := reply.Body.(*icmp.Echo); ok && reply.Type == echoReply && echo.ID == id && from.String() == to.String() {
				r.Reached = true
				return nil
			}
		}
	})
	if err != nil {
		r.Err = err
	}
	return r
}

// refused reports an answer from the target itself: a TCP reset, or ICMP
// port unreachable for UDP. The packet got through, so the path is open.
// Timeouts and "no route" are not answers.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
