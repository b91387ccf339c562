package runner

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// serve answers each connection to a new loopback listener with greeting,
// then, if it is SSH, sends the client's first line on got.
func serve(t *testing.T, greeting string) (netip.AddrPort, <-chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan string, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(greeting))
			if strings.Contains(greeting, "SSH-") {
				line, _ := bufio.NewReader(c).ReadString('\n')
				got <- line
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String()), got
}

func TestProbeSSH(t *testing.T) {
	ctx := t.Context()
	t.Run("sshd", func(t *testing.T) {
		addr, got := serve(t, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
		id, err := ProbeSSH(ctx, addr)
		if err != nil || id != "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3" {
			t.Errorf("ProbeSSH = %q, %v", id, err)
		}
		if line := <-got; !strings.HasPrefix(line, "SSH-2.0-") {
			t.Errorf("the probe said %q, want an SSH identification", line)
		}
	})
	t.Run("lines before the identification", func(t *testing.T) {
		addr, _ := serve(t, "welcome\r\nSSH-2.0-dropbear\r\n")
		if id, err := ProbeSSH(ctx, addr); err != nil || id != "SSH-2.0-dropbear" {
			t.Errorf("ProbeSSH = %q, %v", id, err)
		}
	})
	t.Run("not SSH", func(t *testing.T) {
		addr, _ := serve(t, "HTTP/1.1 400 Bad Request\r\n\r\n")
		if id, err := ProbeSSH(ctx, addr); err == nil {
			t.Errorf("ProbeSSH = %q, want an error", id)
		}
	})
	t.Run("nobody listens", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		closed := netip.MustParseAddrPort(l.Addr().String())
		l.Close()
		if id, err := ProbeSSH(ctx, closed); err == nil {
			t.Errorf("ProbeSSH = %q, want an error", id)
		}
	})
}

// TestMarkReady proves readiness lands in the started record of the VMM
// it was seen for, and nowhere else.
func TestMarkReady(t *testing.T) {
	testenv.NeedRoot(t)
	in, vm := load(t, "")
	run, err := supervise.OpenRunDir(vm)
	if err != nil {
		t.Fatal(err)
	}
	defer run.Close()
	vmm, other := proc.ID{Pid: 42, Start: 7}, proc.ID{Pid: 43, Start: 7}
	if err := markReady(run, vm, vmm, time.Now()); err == nil {
		t.Error("marked a VM ready that has no started record")
	}
	began := time.Now()
	if err := writeStarted(run, in, vm, vmm, began); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := ReadStarted(vm); st.Guest() != "booting" {
		t.Errorf("a fresh record says %s, want booting", st.Guest())
	}
	if err := markReady(run, vm, other, time.Now()); err == nil {
		t.Error("marked the record of another VMM")
	}
	at := began.Add(12 * time.Second)
	if err := markReady(run, vm, vmm, at); err != nil {
		t.Fatal(err)
	}
	st, ok, err := ReadStarted(vm)
	if !ok || err != nil || st.Guest() != "ready" || !st.Ready.Equal(at) || st.VMMPid != 42 || !st.Time.Equal(began) {
		t.Errorf("after markReady: %+v, %v, %v", st, ok, err)
	}
	if st.Hash != Hash(Settings(in, vm)) {
		t.Error("markReady changed the settings")
	}
}

// flood answers each connection to a new loopback listener with first,
// then with more, again and again, until the client goes.
func flood(t *testing.T, first, more string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				chunk := []byte(strings.Repeat(more, 32<<10/len(more)))
				if _, err := c.Write([]byte(first)); err != nil {
					return
				}
				for {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

// counter counts the bytes read through it.
type counter struct {
	r io.Reader
	n int
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestProbeSSHBounded: a guest whose "sshd" sends one endless line, or
// endless lines, makes the probe fail with a clear error after reading
// no more than RFC 4253 allows (one probe once buffered 2.85 GiB).
func TestProbeSSHBounded(t *testing.T) {
	for _, tt := range []struct {
		name, first, more, want string
	}{
		{"an endless identification", "SSH-2.0-", "A", "a line longer than 255 bytes"},
		{"an endless line before it", "", "A", "a line longer than 255 bytes"},
		{"endless lines before it", "", "welcome\r\n", "no SSH identification in the first 10 lines"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := flood(t, tt.first, tt.more)
			if id, err := ProbeSSH(t.Context(), addr); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ProbeSSH = %q, %v; want an error saying %q", id, err, tt.want)
			}
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := &counter{r: c}
			if _, err := readIdentification(r); err == nil {
				t.Error("readIdentification: no error")
			}
			if r.n > maxIdentLine*maxIdentLines {
				t.Errorf("read %d bytes, want at most %d", r.n, maxIdentLine*maxIdentLines)
			}
		})
	}
}
