package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Readiness: a guest is ready when its sshd answers on the VM's address,
// which is what a person waits for, and works for any image with sshd.
// The supervisor probes from the host, logs the moment, and records it in
// the started record (Started.Ready), where status and up --wait read it.

// SSHPort is where a guest's sshd listens.
const SSHPort = 22

// probeEvery is how often the supervisor knocks while the guest boots. A
// knock on a port nobody listens on yet costs the guest one TCP reset.
const probeEvery = 200 * time.Millisecond

// ProbeSSH connects to an SSH server at addr and returns its
// identification line ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"), or an
// error if nothing answers with one. It sends an identification of its
// own before closing, so that sshd logs the visit as an ordinary closed
// connection, not as a broken key exchange.
func ProbeSSH(ctx context.Context, addr netip.AddrPort) (string, error) {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second)) // on a fresh TCP connection it cannot fail
	// RFC 4253 4.2: the server may send other lines before its version.
	r := bufio.NewReader(c)
	for range 10 {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reading the SSH identification of %s: %w", addr, err)
		}
		if strings.HasPrefix(line, "SSH-") {
			// Only for sshd's log (see above): the line read is the answer.
			_, _ = fmt.Fprint(c, "SSH-2.0-microvm-ready\r\n")
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
	return "", fmt.Errorf("%s sent no SSH identification", addr)
}

// watchReady probes vm's sshd until it answers or ctx ends, then logs it
// and records it in vm's started record in run, the one of the VMM vmm.
// began is when that VMM started.
func watchReady(ctx context.Context, run *safedir.Dir, vm *config.VM, vmm proc.ID, began time.Time, logf func(string, ...any)) {
	addr := netip.AddrPortFrom(vm.Addr, SSHPort)
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		if id, err := ProbeSSH(ctx, addr); err == nil {
			now := time.Now()
			logf("ready: sshd answers on %s %s after the VMM started (%s)", addr, now.Sub(began).Round(100*time.Millisecond), id)
			if err := markReady(run, vm, vmm, now); err != nil {
				logf("recording that the guest is ready: %v", err)
			}
			if err := bootReady(run, vm, began, now); err != nil {
				logf("recording how long the boot took: %v", err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// markReady records in vm's started record that its guest was ready at t,
// if the record is still the one of the VMM vmm.
func markReady(run *safedir.Dir, vm *config.VM, vmm proc.ID, t time.Time) error {
	st, ok, err := ReadStarted(vm)
	if err != nil {
		return err
	}
	if !ok || st.VMM() != vmm {
		return errors.New("the started record is gone or belongs to another VMM")
	}
	t = t.UTC()
	st.Ready = &t
	return writeStartedFile(run, vm, st)
}
