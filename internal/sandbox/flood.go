package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Floods tell how long a path was open, to the millisecond: a probe goes
// every millisecond, each numbered, and each answer says which probe it
// answers, so a test can tell exactly which probes got through, and when
// they were sent. The firewall tests use them across a flush of the
// ruleset, to show that nothing sent after the watcher closed the VM ports
// got through, and bench flush to measure how long a flush leaves a path
// open.

// EchoPort is where Echo listens.
const EchoPort = 9000

// Echo starts a UDP server on addr:EchoPort ("" for every address) in
// namespace ns that sends every datagram back. It lives until the
// namespace goes. Bind it to the address probes go to where NAT is on the
// way back, so that the answer comes from that address.
func Echo(ns, addr string) error {
	return Do(ns, func() error {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("%s:%d", addr, EchoPort))
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo(buf[:n], from)
			}
		}()
		return nil
	})
}

// Flood sends a numbered probe every millisecond from namespace ns to to,
// for d or until stop is closed, and returns when each probe that was
// answered had been sent. With a port, the probes are UDP datagrams to an
// Echo server; without (port 0), ICMP echo requests, which a guest's
// kernel answers.
func Flood(ns string, to netip.AddrPort, d time.Duration, stop <-chan struct{}) ([]time.Time, error) {
	var p prober
	if err := Do(ns, func() error {
		var err error
		if to.Port() == 0 {
			p, err = newPinger(to.Addr())
		} else {
			p, err = newUDPProber(to)
		}
		return err
	}); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var sent, answered []time.Time
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			seq, err := p.recv()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if err != nil {
				continue // an ICMP error while the path is closed; not an answer
			}
			mu.Lock()
			if seq < uint64(len(sent)) {
				answered = append(answered, sent[seq])
			}
			mu.Unlock()
		}
	}()
	end := time.After(d)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
loop:
	for seq := uint64(0); ; seq++ {
		select {
		case <-stop:
			break loop
		case <-end:
			break loop
		case <-tick.C:
		}
		mu.Lock()
		sent = append(sent, time.Now())
		mu.Unlock()
		p.send(seq)
	}
	time.Sleep(100 * time.Millisecond) // answers on their way
	p.close()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	return answered, nil
}

type prober interface {
	send(seq uint64)
	recv() (uint64, error) // the number of the probe answered
	close()                // ends recv with os.ErrDeadlineExceeded
}

type udpProber struct{ c net.Conn }

func newUDPProber(to netip.AddrPort) (*udpProber, error) {
	c, err := net.Dial("udp4", to.String())
	return &udpProber{c}, err
}

func (u *udpProber) send(seq uint64) {
	u.c.Write(binary.BigEndian.AppendUint64(nil, seq))
}

func (u *udpProber) recv() (uint64, error) {
	buf := make([]byte, 64)
	n, err := u.c.Read(buf)
	if err != nil {
		return 0, err
	}
	if n != 8 {
		return 0, fmt.Errorf("an answer of %d bytes", n)
	}
	return binary.BigEndian.Uint64(buf), nil
}

func (u *udpProber) close() { u.c.SetReadDeadline(time.Now()) }

// pinger sends ICMP echo requests with the probe's number in their data.
// Its raw socket sees every ICMP packet of the namespace: it keeps only
// replies from the target with its own identifier.
type pinger struct {
	c  *icmp.PacketConn
	to netip.Addr
	id int
}

func newPinger(to netip.Addr) (*pinger, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("opening an ICMP socket: %w", err)
	}
	return &pinger{c: c, to: to, id: os.Getpid()&0x7fff ^ int(time.Now().UnixNano()&0x7fff)}, nil
}

func (p *pinger) send(seq uint64) {
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: int(seq & 0xffff), Data: binary.BigEndian.AppendUint64(nil, seq)}}
	b, _ := msg.Marshal(nil)
	p.c.WriteTo(b, &net.IPAddr{IP: p.to.AsSlice()})
}

func (p *pinger) recv() (uint64, error) {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.c.ReadFrom(buf)
		if err != nil {
			return 0, err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply || from.String() != p.to.String() {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == p.id && len(e.Data) == 8 {
			return binary.BigEndian.Uint64(e.Data), nil
		}
	}
}

func (p *pinger) close() { p.c.SetReadDeadline(time.Now()) }
