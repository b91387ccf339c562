package firewall_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// echoPort is where the test's echo servers listen.
const echoPort = 9000

// TestWatch: with the host part applied in a sandbox and namespaces
// standing in for two VMs, the watcher repairs a flushed ruleset and hand
// edits within a second, failing closed meanwhile: floods of numbered
// datagrams from one VM to the other and to the host show that nothing
// sent after the watcher set the ports down got through, and traffic to
// the internet flows again after. A change apply makes is left alone.
func TestWatch(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
	run := t.TempDir()
	src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nrun_dir = %q\n[host.tailscale]\nenabled = false\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n", run)
	in := parse(t, src)
	only1 := parse(t, strings.Split(src, "[vm.vm2]")[0])
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	applyHost(t, sb, in)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{sb.VMs["vm1"], sb.VMs["vm2"], sb.Host} {
		echo(t, ns, "")
	}
	// Bound to its address, so that its answers come from where the
	// datagrams went and NAT takes them back.
	echo(t, sb.Internet, sandbox.InternetAddr.String())
	vm1, vm2 := sb.VMs["vm1"], sb.VMs["vm2"]
	toVM2 := netip.AddrPortFrom(netip.MustParseAddr("10.2.0.2"), echoPort)
	toVM1 := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), echoPort)
	toGateway := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.1"), echoPort)
	toInternet := netip.AddrPortFrom(sandbox.InternetAddr, echoPort)
	type path struct {
		from string
		to   netip.AddrPort
	}
	closed := []path{{vm1, toVM2}, {vm2, toVM1}, {vm1, toGateway}}

	// The floods can see a breach: without the table, vm1 reaches vm2.
	if out, err := sandbox.Command(sb.Host, "nft", "delete", "table", "inet", "microvm").CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	if got := flood(t, vm1, toVM2, 300*time.Millisecond, nil); len(got) == 0 {
		t.Fatal("without the table, no datagram from vm1 reached vm2: the floods below would prove nothing")
	}
	applyHost(t, sb, in)
	if got := flood(t, vm1, toVM2, 300*time.Millisecond, nil); len(got) > 0 {
		t.Fatalf("with the table, %d datagrams from vm1 reached vm2", len(got))
	}
	if got := flood(t, vm1, toInternet, 200*time.Millisecond, nil); len(got) == 0 {
		t.Fatal("vm1 does not reach the internet")
	}

	restored := make(chan firewall.Restore, 10)
	var logMu sync.Mutex
	var log strings.Builder
	w := &firewall.Watcher{
		Host: in.Host,
		Logf: func(format string, args ...any) {
			logMu.Lock()
			defer logMu.Unlock()
			fmt.Fprintf(&log, format+"\n", args...)
		},
		Restored: func(r firewall.Restore) { restored <- r },
	}
	ready := make(chan struct{})
	w.Ready = func() { close(ready) }
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- sandbox.Do(sb.Host, func() error { return w.Run(stop) }) }()
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			t.Error(err)
		}
		logMu.Lock()
		t.Logf("the watcher's log:\n%s", log.String())
		logMu.Unlock()
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the watcher stopped: %v", err)
	}

	events := []struct {
		name string
		edit func() string // an nft script, run in the host namespace
		want string        // in the restore's changes
	}{
		{"nft flush ruleset", func() string { return "flush ruleset" }, "table inet microvm is missing"},
		{"a drop turned into an accept", func() string {
			return "replace rule inet microvm forward handle " + ruleHandle(t, sb.Host, "forward", "isolation") +
				` iifname @vm_bridges oifname @vm_bridges accept comment "isolation: no VM reaches another"`
		}, `rule "isolation: no VM reaches another" changed (drop -> accept)`},
		{"an element removed", func() string { return `delete element inet microvm vm_bridges { "br-vm2" }` }, "set vm_bridges lacks br-vm2"},
		{"the table deleted", func() string { return "delete table inet microvm" }, "table inet microvm is missing"},
	}
	for _, ev := range events {
		t.Run(ev.name, func(t *testing.T) {
			script := ev.edit()
			stopFlood := make(chan struct{})
			answered := make([][]time.Time, len(closed))
			var wg sync.WaitGroup
			for i, p := range closed {
				wg.Add(1)
				go func() { defer wg.Done(); answered[i] = flood(t, p.from, p.to, time.Minute, stopFlood) }()
			}
			time.Sleep(100 * time.Millisecond)
			cmd := sandbox.Command(sb.Host, "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(script)
			if out, err := cmd.CombinedOutput(); err != nil {
				close(stopFlood)
				wg.Wait()
				t.Fatalf("%s: %s %v", script, out, err)
			}
			var r firewall.Restore
			select {
			case r = <-restored:
			case <-time.After(5 * time.Second):
				close(stopFlood)
				wg.Wait()
				t.Fatal("no repair 5 s after the edit")
			}
			time.Sleep(200 * time.Millisecond)
			close(stopFlood)
			wg.Wait()

			t.Logf("ports %s down %s after the change was heard; table restored and ports up %d ms after it",
				r.Ports, r.Closed.Sub(r.Heard), r.Millis)
			if !strings.Contains(strings.Join(r.Changes, "\n"), ev.want) {
				t.Errorf("the watcher saw %q, want %q", r.Changes, ev.want)
			}
			if r.Millis > 1000 || r.Err != "" {
				t.Errorf("restore: %d ms, error %q; want within a second", r.Millis, r.Err)
			}
			if len(r.Ports) != 4 {
				t.Errorf("ports held down: %q, want the two TAPs and the two stand-ins' ports", r.Ports)
			}
			for i, p := range closed {
				var early int
				for _, sent := range answered[i] {
					if !sent.Before(r.Closed) {
						t.Errorf("%s -> %s: a datagram sent %s after the ports went down got through", p.from, p.to, sent.Sub(r.Closed))
					} else {
						early++
					}
				}
				if early > 0 {
					t.Logf("%s -> %s: %d datagrams sent in the %s between the edit and the ports going down got through", p.from, p.to, early, r.Closed.Sub(r.Heard))
				}
			}
			sandbox.Do(sb.Host, func() error {
				if acts, err := firewall.Diff(in); err != nil || len(acts) > 0 {
					t.Errorf("after the repair, plan: %v %v", acts, err)
				}
				return nil
			})
			// Traffic flows again. A stand-in's veth lost its carrier with
			// the port, and with it the gateway's ARP entry: its kernel asks
			// again within a second.
			for began := time.Now(); ; {
				if got := flood(t, vm1, toInternet, 100*time.Millisecond, nil); len(got) > 0 {
					t.Logf("vm1 reaches the internet again %s after the repair", time.Since(began).Round(10*time.Millisecond))
					break
				}
				if time.Since(began) > 3*time.Second {
					t.Error("3 s after the repair, vm1 does not reach the internet")
					break
				}
			}
		})
	}

	t.Run("apply's own change stays", func(t *testing.T) {
		applyHost(t, sb, only1)
		select {
		case r := <-restored:
			t.Errorf("the watcher undid apply's change: %q", r.Changes)
		case <-time.After(time.Second):
		}
		sandbox.Do(sb.Host, func() error {
			if acts, err := firewall.Diff(only1); err != nil || len(acts) > 0 {
				t.Errorf("after apply without vm2, plan: %v %v", acts, err)
			}
			return nil
		})
	})
}

func parse(t *testing.T, src string) *config.Infra {
	t.Helper()
	file := filepath.Join(t.TempDir(), "infra.toml")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// applyHost applies the host part of in in the sandbox's host namespace.
func applyHost(t *testing.T, sb *sandbox.Sandbox, in *config.Infra) {
	t.Helper()
	err := sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ruleHandle finds the handle of the rule in chain whose comment has word.
func ruleHandle(t *testing.T, ns, chain, word string) string {
	t.Helper()
	out, err := sandbox.Command(ns, "nft", "-a", "list", "chain", "inet", "microvm", chain).Output()
	if err != nil {
		t.Fatalf("nft list chain: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if _, h, ok := strings.Cut(line, "# handle "); ok && strings.Contains(line, word) {
			return strings.TrimSpace(h)
		}
	}
	t.Fatalf("no rule with %q in chain %s:\n%s", word, chain, out)
	return ""
}

// echo starts a UDP server on addr:echoPort in namespace ns that sends
// every datagram back; it lives until the namespace goes.
func echo(t *testing.T, ns, addr string) {
	t.Helper()
	err := sandbox.Do(ns, func() error {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("%s:%d", addr, echoPort))
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
	if err != nil {
		t.Fatal(err)
	}
}

// flood sends a numbered datagram every millisecond from namespace ns to
// to, for d or until stop is closed, and returns when each datagram that
// came back was sent.
func flood(t *testing.T, ns string, to netip.AddrPort, d time.Duration, stop <-chan struct{}) []time.Time {
	var c net.Conn
	if err := sandbox.Do(ns, func() error {
		var err error
		c, err = net.Dial("udp4", to.String())
		return err
	}); err != nil {
		t.Error(err)
		return nil
	}
	defer c.Close()
	var mu sync.Mutex
	var sent []time.Time
	var answered []time.Time
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					return
				}
				continue // ICMP errors while the path is closed
			}
			if n == 8 {
				seq := binary.BigEndian.Uint64(buf[:8])
				mu.Lock()
				if seq < uint64(len(sent)) {
					answered = append(answered, sent[seq])
				}
				mu.Unlock()
			}
		}
	}()
	end := time.After(d)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 8)
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
		binary.BigEndian.PutUint64(buf, seq)
		c.Write(buf)
	}
	time.Sleep(100 * time.Millisecond) // answers on their way
	c.SetReadDeadline(time.Now())
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	return answered
}
