package check

import (
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/ssh"
)

// GuestProber sends probes from inside real guests, over SSH, with the
// guest's own tools (bash's /dev/tcp and /dev/udp, ping). Probes from the
// host go to the host Prober.
type GuestProber struct {
	ssh  map[string]*ssh.Client
	host Prober
	run  func(c *ssh.Client, cmd string) (string, int, error)
	// slots limits the probes running at once in each guest: sshd allows
	// 10 sessions per connection (MaxSessions), and a slow guest should
	// not be timed out by its own load.
	slots map[string]chan struct{}
}

// NewGuestProber probes from the guests behind clients (VM name -> client),
// running commands with run.
func NewGuestProber(clients map[string]*ssh.Client, host Prober, run func(*ssh.Client, string) (string, int, error)) *GuestProber {
	p := &GuestProber{ssh: clients, host: host, run: run, slots: map[string]chan struct{}{}}
	for name := range clients {
		p.slots[name] = make(chan struct{}, 4)
	}
	return p
}

// probeTimeout is how long a guest waits for an answer, in seconds.
const probeTimeout = 8

// exec runs cmd in guest from, waiting for a free slot.
func (p *GuestProber) exec(from, cmd string) (string, int, error) {
	c, slots := p.ssh[from], p.slots[from]
	if c == nil {
		return "", -1, fmt.Errorf("no SSH connection to %s", from)
	}
	slots <- struct{}{}
	defer func() { <-slots }()
	return p.run(c, cmd)
}

func (p *GuestProber) TCP(from string, to netip.AddrPort) Result {
	if _, guest := p.ssh[from]; !guest {
		return p.host.TCP(from, to)
	}
	// Connect, then print the first line the server sends, if any.
	return p.stream(from, "tcp", to, fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && timeout 1 head -n1 <&3", to.Addr(), to.Port()))
}

func (p *GuestProber) UDP(from string, to netip.AddrPort) Result {
	if _, guest := p.ssh[from]; !guest {
		return p.host.UDP(from, to)
	}
	// Send a datagram and wait for the answer; a port-unreachable error
	// shows up as "Connection refused" on the read.
	return p.stream(from, "udp", to, fmt.Sprintf("exec 3<>/dev/udp/%s/%d && echo probe >&3 && head -n1 <&3", to.Addr(), to.Port()))
}

func (p *GuestProber) Ping(from string, to netip.Addr) Result {
	if _, guest := p.ssh[from]; !guest {
		return p.host.Ping(from, to)
	}
	out, code, err := p.exec(from, fmt.Sprintf("ping -n -c1 -W%d %s", probeTimeout, to))
	if err != nil {
		return Result{Err: err}
	}
	if code != 0 {
		return Result{Err: fmt.Errorf("ping: %s", lastLine(out))}
	}
	return Result{Reached: true}
}

// stream runs script under a timeout in bash and reads its outcome: a line
// from the server ("seen ADDR"), a connection that was refused (the target
// answered), or nothing before the timeout (blocked).
func (p *GuestProber) stream(from, proto string, to netip.AddrPort, script string) Result {
	out, code, err := p.exec(from, fmt.Sprintf("timeout %d bash -c '%s'", probeTimeout, script))
	if err != nil {
		return Result{Err: err}
	}
	switch {
	case strings.Contains(out, "Connection refused"):
		return Result{Reached: true, Refused: true}
	case strings.HasPrefix(out, "seen "):
		return Result{Reached: true, SeenAs: strings.TrimSpace(strings.TrimPrefix(lastLine(out), "seen "))}
	case code == 0 && proto == "tcp":
		return Result{Reached: true} // connected; the server said nothing
	}
	return Result{Err: fmt.Errorf("%s %s: no answer (exit %d) %s", proto, to, code, lastLine(out))}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
