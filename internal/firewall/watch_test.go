package firewall_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestWatch: with the host part applied in a sandbox and namespaces
// standing in for two VMs, the watcher repairs a flushed ruleset and hand
// edits within a second, failing closed meanwhile: floods of numbered
// datagrams from one VM to the other and to the host show that nothing
// sent after the watcher set the ports down got through, nothing at all
// from one VM to the other (policy routing, package hostnet, has no
// window), and traffic to the internet flows again after. A change apply
// makes is left alone.
func TestWatch(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
	run := t.TempDir()
	src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nrun_dir = %q\n[host.tailscale]\nenabled = false\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n", run)
	in := parse(t, src)
	only1 := parse(t, strings.Split(src, "[vm.vm2]")[0])
	sb := sandboxtest.New(t, in)
	applyHost(t, sb, in)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{sb.VMs["vm1"], sb.VMs["vm2"], sb.Host} {
		sandboxtest.Echo(t, ns, "")
	}
	// Bound to its address, so that its answers come from where the
	// datagrams went and NAT takes them back.
	sandboxtest.Echo(t, sb.Internet, sandbox.InternetAddr.String())
	vm1, vm2 := sb.VMs["vm1"], sb.VMs["vm2"]
	toVM2 := netip.AddrPortFrom(netip.MustParseAddr("10.2.0.2"), sandboxtest.EchoPort)
	toVM1 := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.2"), sandboxtest.EchoPort)
	toGateway := netip.AddrPortFrom(netip.MustParseAddr("10.1.0.1"), sandboxtest.EchoPort)
	toInternet := netip.AddrPortFrom(sandbox.InternetAddr, sandboxtest.EchoPort)
	type path struct {
		from string
		to   netip.AddrPort
	}
	closed := []path{{vm1, toVM2}, {vm2, toVM1}, {vm1, toGateway}}

	// The floods can see a breach: without the table, vm1 reaches the
	// host. (Not vm2: the policy routing of package hostnet keeps VMs
	// apart without the table, which the floods below show.)
	if out, err := sandbox.Command(sb.Host, "nft", "delete", "table", "inet", "microvm").CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	if got := sandboxtest.Flood(t, vm1, toGateway, 300*time.Millisecond, nil); len(got) == 0 {
		t.Fatal("without the table, no datagram from vm1 reached the host: the floods below would prove nothing")
	}
	applyHost(t, sb, in)
	for _, p := range closed {
		if got := sandboxtest.Flood(t, p.from, p.to, 300*time.Millisecond, nil); len(got) > 0 {
			t.Fatalf("with the table, %d datagrams from %s reached %s", len(got), p.from, p.to)
		}
	}
	if got := sandboxtest.Flood(t, vm1, toInternet, 200*time.Millisecond, nil); len(got) == 0 {
		t.Fatal("vm1 does not reach the internet")
	}

	restored := make(chan firewall.Restore, 10)
	loaded := make(chan struct{}, 1)
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
		Loaded: func() {
			select {
			case loaded <- struct{}{}:
			default:
			}
		},
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
			out, err := sandbox.Command(sb.Host, "nft", "-a", "list", "chain", "inet", "microvm", "forward").Output()
			h, rule, ok := sandboxtest.DropToAccept(string(out))
			if err != nil || !ok {
				t.Fatalf("no rule that drops in chain forward: %v\n%s", err, out)
			}
			return "replace rule inet microvm forward handle " + h + " " + rule
		}, "changed (drop -> accept)"},
		{"an element removed", func() string { return `delete element inet microvm vm_bridges { "br-vm2" }` }, "set vm_bridges lacks br-vm2"},
		{"the table deleted", func() string { return "delete table inet microvm" }, "table inet microvm is missing"},
		{"the table made dormant", func() string { return "add table inet microvm { flags dormant; }" }, "has other flags"},
	}
	for _, ev := range events {
		t.Run(ev.name, func(t *testing.T) {
			script := ev.edit()
			stopFlood := make(chan struct{})
			answered := make([][]time.Time, len(closed))
			var wg sync.WaitGroup
			for i, p := range closed {
				wg.Add(1)
				go func() { defer wg.Done(); answered[i] = sandboxtest.Flood(t, p.from, p.to, time.Minute, stopFlood) }()
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
				if early > 0 && p.to.Addr() != toGateway.Addr() {
					t.Errorf("%s -> %s: %d datagrams got through from one VM to another: policy routing should have dropped them whatever the table", p.from, p.to, early)
				}
			}
			if err := sandbox.Do(sb.Host, func() error {
				if d, err := firewall.Diff(in); err != nil || !d.Empty() {
					t.Errorf("after the repair, plan: %v %v", d.Setup, err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// Traffic flows again. A stand-in's veth lost its carrier with
			// the port, and with it the gateway's ARP entry: its kernel asks
			// again within a second.
			for began := time.Now(); ; {
				if got := sandboxtest.Flood(t, vm1, toInternet, 100*time.Millisecond, nil); len(got) > 0 {
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

	// The egress resolver adds the addresses of a VM's names between
	// loads, and they expire: neither is an edit, nor drift.
	t.Run("an egress address stays", func(t *testing.T) {
		script := fmt.Sprintf("add element inet microvm %s { \"br-vm1\" . %s timeout 60s comment \"www.example.com\" }\n"+
			"add element inet microvm %s { \"br-vm1\" . 2001:db8:113::20 timeout 1s }\n", firewall.EgressSet, sandbox.InternetAddr, firewall.EgressSet6)
		cmd := sandbox.Command(sb.Host, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %s %v", script, out, err)
		}
		select {
		case r := <-restored:
			t.Errorf("the watcher took an egress address for an edit: %q", r.Changes)
		case <-time.After(2 * time.Second): // the second one expires meanwhile
		}
		if err := sandbox.Do(sb.Host, func() error {
			if d, err := firewall.Diff(in); err != nil || !d.Empty() {
				t.Errorf("with an egress address, plan: %v %v", d.Setup, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		out, _ := sandbox.Command(sb.Host, "nft", "list", "set", "inet", "microvm", firewall.EgressSet).Output()
		if !strings.Contains(string(out), sandbox.InternetAddr.String()) {
			t.Errorf("the egress address is gone:\n%s", out)
		}
	})

	t.Run("apply's own change stays", func(t *testing.T) {
		applyHost(t, sb, only1)
		select {
		case r := <-restored:
			t.Errorf("the watcher undid apply's change: %q", r.Changes)
		case <-time.After(time.Second):
		}
		if err := sandbox.Do(sb.Host, func() error {
			if d, err := firewall.Diff(only1); err != nil || !d.Empty() {
				t.Errorf("after apply without vm2, plan: %v %v", d.Setup, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	// Adding a VM to a table apply loaded, which nothing changed since,
	// updates its elements in place: a change to part of the table, as a
	// hand edit is, yet the watcher, told its generation beforehand,
	// compares before it sets any port down, and finds it as recorded.
	t.Run("apply's update stays, the ports up", func(t *testing.T) {
		up := map[int]string{} // the ports on a VM bridge, all up
		links := make(chan netlink.LinkUpdate, 1000)
		stopLinks := make(chan struct{})
		defer close(stopLinks)
		if err := sandbox.Do(sb.Host, func() error {
			all, err := netlink.LinkList()
			for _, l := range all {
				if a := l.Attrs(); a.MasterIndex != 0 && a.Flags&net.FlagUp != 0 {
					up[a.Index] = a.Name
				}
			}
			if err != nil {
				return err
			}
			return netlink.LinkSubscribe(links, stopLinks)
		}); err != nil {
			t.Fatal(err)
		}
		if len(up) == 0 {
			t.Fatal("no port up on a VM bridge: nothing to watch")
		}
		for len(loaded) > 0 {
			<-loaded
		}
		if out := applyHostLog(t, sb, in); !strings.Contains(out, "update table inet microvm in place") {
			t.Fatalf("apply with vm2 again did not update the table in place:\n%s", out)
		}
		select {
		case <-loaded:
		case <-time.After(5 * time.Second):
			t.Fatal("5 s after the update, the watcher has not compared the table")
		}
		select {
		case r := <-restored:
			t.Errorf("the watcher undid apply's update: %q", r.Changes)
		case <-time.After(200 * time.Millisecond):
		}
		for {
			select {
			case u := <-links:
				if name, ok := up[int(u.Index)]; ok && u.Flags&unix.IFF_UP == 0 {
					t.Errorf("port %s went down across the update", name)
				}
				continue
			default:
			}
			break
		}
		if err := sandbox.Do(sb.Host, func() error {
			if d, err := firewall.Diff(in); err != nil || !d.Empty() {
				t.Errorf("after the update, plan: %v %v", d.Setup, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
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
	applyHostLog(t, sb, in)
}

// applyHostLog is applyHost, returning what apply printed.
func applyHostLog(t *testing.T, sb *sandbox.Sandbox, in *config.Infra) string {
	t.Helper()
	var out strings.Builder
	err := sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(&out)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}
