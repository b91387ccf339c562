package qemu

// Tests against a real QEMU: the microvm machine without a kernel, which
// idles in its firmware and answers QMP. They need qemu-system-x86 (Debian
// package qemu-system-x86); TCG, so no KVM.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// idleArgs start a microvm that runs no guest and is controlled over QMP
// on sock.
func idleArgs(sock string, extra ...string) []string {
	return append([]string{
		"-M", "microvm", "-accel", "tcg", "-nodefaults", "-no-user-config",
		"-display", "none", "-device", "i8042",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
	}, extra...)
}

// startQEMU runs an idle microvm, killed when the test ends, and returns it
// with a channel closed when it exits.
func startQEMU(t *testing.T, sock string, extra ...string) (*exec.Cmd, chan struct{}) {
	t.Helper()
	testenv.NeedCommands(t, "qemu-system-x86_64")
	cmd := exec.Command("qemu-system-x86_64", idleArgs(sock, extra...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("QEMU's stderr: %s", stderr.String())
		}
	})
	return cmd, done
}

// dial connects to sock once QEMU listens on it.
func dial(t *testing.T, ctx context.Context, sock string, pid int) *QMP {
	t.Helper()
	for {
		q, err := DialQMP(ctx, sock, pid)
		if err == nil {
			return q
		}
		select {
		case <-ctx.Done():
			t.Fatalf("DialQMP: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestQMP proves the client against QEMU 7.2 itself: the greeting and
// capabilities negotiation, a query, the commands the stop steps send (with
// the events QEMU interleaves), an error answer, and quit.
func TestQMP(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "qmp.sock")
	cmd, done := startQEMU(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := dial(t, ctx, sock, cmd.Process.Pid)
	defer q.Close()

	if v := q.Greet.QMP.Version.QEMU; v.Major < 7 {
		t.Errorf("greeting: QEMU %d.%d.%d, want 7 or newer", v.Major, v.Minor, v.Micro)
	}
	st, err := q.Status(ctx)
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	if st.Status != "running" || !st.Running {
		t.Errorf("query-status: got %+v, want running", st)
	}
	if err := q.SendKeys(ctx, "ctrl", "alt", "delete"); err != nil {
		t.Errorf("send-key: %v", err)
	}
	// system_powerdown emits a POWERDOWN event, which QEMU may send
	// before the answer: the client must read past it, and the next
	// command must get its own answer.
	if err := q.Powerdown(ctx); err != nil {
		t.Errorf("system_powerdown: %v", err)
	}
	if _, err := q.Status(ctx); err != nil {
		t.Errorf("query-status after an event: %v", err)
	}
	var qerr *Error
	if err := q.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Errorf("unknown command: got %v, want a CommandNotFound *Error", err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Errorf("quit: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("QEMU still runs 10 s after quit")
	}
}

// TestNoReboot proves what the first stop step relies on: with -no-reboot
// a guest reset (what ctrl-alt-del makes systemd do) makes QEMU exit.
func TestNoReboot(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "qmp.sock")
	cmd, done := startQEMU(t, sock, "-no-reboot")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := dial(t, ctx, sock, cmd.Process.Pid)
	defer q.Close()
	if err := q.Execute(ctx, "system_reset", nil, nil); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("system_reset: %v (QEMU may exit before answering)", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Errorf("QEMU with -no-reboot still runs 10 s after a reset")
	}
}

// TestStopRealQEMU proves the backend's stop steps on a real QEMU through
// vmm.Machine: Ready answers over QMP; a machine with no guest ignores
// ctrl-alt-del and the power button, so after the grace QMP quit stops it,
// and no SIGKILL is needed.
func TestStopRealQEMU(t *testing.T) {
	testenv.NeedCommands(t, "qemu-system-x86_64")
	in, err := config.Parse("infra.toml", []byte(`
[host]
uplink = "eth0"
run_dir = "`+testenv.ShortDir(t)+`"
[vm.vm1]
subnet = "10.1.0.0/24"
hypervisor = "qemu"
`))
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("vm1")
	if err := os.MkdirAll(vm.VMMDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Backend{Accel: "tcg", Grace: time.Second}
	m, err := vmm.Start(b, vm, exec.Command("qemu-system-x86_64", idleArgs(vm.ControlSocket())...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	var steps []string
	m.Logf = func(format string, args ...any) { steps = append(steps, fmt.Sprintf(format, args...)) }
	start := time.Now()
	if err := m.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Stop took %v: the first step should have waited its grace (1s) for a guest", d)
	}
	log := strings.Join(steps, "\n")
	for _, want := range []string{"QMP send-key ctrl-alt-del and system_powerdown", "QMP quit"} {
		if !strings.Contains(log, want) {
			t.Errorf("Stop did not run %q; it logged:\n%s", want, log)
		}
	}
	if strings.Contains(log, "SIGKILL") {
		t.Errorf("Stop needed SIGKILL")
	}
}

// countConn counts the bytes read through it.
type countConn struct {
	net.Conn
	n int
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n += n
	return n, err
}

// TestQMPBounded: a VMM that answers with an endless line, as a guest
// that took QEMU over could make it, fails the client with a clear error
// once it has read one message's bound (an unbounded decoder read 1.8 GiB
// in 5 s). The fake QEMU is this process, on a socket of the test's.
func TestQMPBounded(t *testing.T) {
	const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}` + "\r\n"
	for _, tt := range []struct{ name, first string }{
		{"greeting", `{"QMP": {"version": "`},
		{"answer", greeting + `{"return": "`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(testenv.ShortDir(t), "qmp.sock")
			l, err := net.Listen("unix", sock)
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
						chunk := []byte(strings.Repeat("A", 32<<10))
						if _, err := c.Write([]byte(tt.first)); err != nil {
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
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			want := fmt.Sprintf("a message longer than %d bytes", maxMessage)
			if _, err := DialQMP(ctx, sock, os.Getpid()); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("DialQMP: %v; want an error saying %q", err, want)
			}
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			cc := &countConn{Conn: c}
			if _, err := handshake(ctx, cc); err == nil {
				t.Error("handshake: no error")
			}
			if limit := len(tt.first) + maxMessage + 4096; cc.n > limit {
				t.Errorf("read %d bytes, want at most %d (a message and a buffer)", cc.n, limit)
			}
		})
	}
}
