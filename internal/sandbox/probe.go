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

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

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

// Serve starts a TCP and a UDP server on port in namespace ns that answer
// every client with "seen ADDR", the address they saw it come from. The
// servers live until the namespace is deleted.
func Serve(ns string, port int) error {
	return Do(ns, func() error {
		tl, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
		if err != nil {
			return fmt.Errorf("listening in %s: %w", ns, err)
		}
		ul, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		if err != nil {
			tl.Close()
			return fmt.Errorf("listening in %s: %w", ns, err)
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
		// Answer from the address the client asked (the namespace has
		// several: a router's, the internet server's, the metadata
		// server's), or NAT on the way back would not recognize the reply.
		pc := ipv4.NewPacketConn(ul)
		if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
			tl.Close()
			ul.Close()
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
	})
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
		c, err := d.Dial("tcp4", to.String())
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
		c, err := net.Dial("udp4", to.String())
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

// Ping sends one ICMP echo request from namespace ns and waits for the reply.
func Ping(ns string, to netip.Addr) check.Result {
	var r check.Result
	err := Do(ns, func() error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return fmt.Errorf("opening ICMP socket: %w", err)
		}
		defer c.Close()
		id := os.Getpid()&0x7fff ^ int(time.Now().UnixNano()&0x7fff)
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("microvm")}}
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
			reply, err := icmp.ParseMessage(1, buf[:n])
			if err != nil {
				continue
			}
			// The raw socket sees every ICMP packet in the namespace: keep
			// only the answer to this probe.
			if echo, ok := reply.Body.(*icmp.Echo); ok && reply.Type == ipv4.ICMPTypeEchoReply && echo.ID == id && from.String() == to.String() {
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
