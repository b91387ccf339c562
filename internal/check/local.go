package check

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// LocalProber sends the host's probes from this process's namespace: the
// prober of microvm check, beside the guests' (NewGuestProber).
type LocalProber struct{}

const localTimeout = 2 * time.Second

// MaxSeen bounds what a probe reads of a TCP listener's answer ("seen
// ADDR\n", as UDP's 256-byte datagram): the listener may be a VM's.
const MaxSeen = 256

func (LocalProber) TCP(from string, to netip.AddrPort) Result {
	c, err := net.DialTimeout("tcp", to.String(), localTimeout)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return Result{Reached: true, Refused: true}
		}
		return Result{Err: err}
	}
	defer c.Close()
	// The connection is the result; what the listener says (who it saw)
	// is a detail, missing when the deadline or the peer cut it short.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	line, _ := bufio.NewReader(io.LimitReader(c, MaxSeen)).ReadString('\n')
	r := Result{Reached: true}
	if strings.HasPrefix(line, "seen ") {
		r.SeenAs = strings.TrimSpace(strings.TrimPrefix(line, "seen "))
	}
	return r
}

func (LocalProber) UDP(from string, to netip.AddrPort) Result {
	c, err := net.Dial("udp", to.String())
	if err != nil {
		return Result{Err: err}
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(localTimeout)) // on a fresh connection it cannot fail
	if _, err := c.Write([]byte("probe\n")); err != nil {
		return Result{Err: err}
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return Result{Reached: true, Refused: true}
		}
		return Result{Err: err}
	}
	return Result{Reached: true, SeenAs: strings.TrimSpace(strings.TrimPrefix(string(buf[:n]), "seen "))}
}

func (LocalProber) Ping(from string, to netip.Addr) Result {
	out, err := exec.Command("ping", "-n", "-c1", "-W2", to.String()).CombinedOutput()
	if err != nil {
		return Result{Err: fmt.Errorf("ping: %s", strings.TrimSpace(string(out)))}
	}
	return Result{Reached: true}
}
