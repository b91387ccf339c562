package runner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	id, err := readIdentification(c)
	if err != nil {
		return "", fmt.Errorf("reading the SSH identification of %s: %w", addr, err)
	}
	// Only for sshd's log (see above): the line read is the answer.
	_, _ = fmt.Fprint(c, "SSH-2.0-microvm-ready\r\n")
	return id, nil
}

// The guest answers the probe, and a hostile one could send one endless
// line (a probe once buffered 2.85 GiB of it): what is read is bounded as
// RFC 4253 (4.2) bounds the identification line, 255 bytes with its CR
// LF, and the lines a server may send before it are held to the same
// length and to maxIdentLines.
const (
	maxIdentLine  = 255
	maxIdentLines = 10
)

// readIdentification reads an SSH server's identification line from r,
// without its CR LF, reading at most maxIdentLines lines of maxIdentLine
// bytes.
func readIdentification(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxIdentLine*maxIdentLines), maxIdentLine)
	for range maxIdentLines {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", fmt.Errorf("a line longer than %d bytes (RFC 4253 allows %d)", maxIdentLine, maxIdentLine)
		}
		if err != nil {
			return "", err
		}
		if bytes.HasPrefix(line, []byte("SSH-")) {
			return strings.TrimRight(string(line), "\r\n"), nil
		}
	}
	return "", fmt.Errorf("no SSH identification in the first %d lines", maxIdentLines)
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
