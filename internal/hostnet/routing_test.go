package hostnet_test

import (
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestRoutingWithoutFirewall: with the host part applied in a sandbox and
// namespaces standing in for four VMs, `nft flush ruleset` leaves the
// policy routing: no VM reaches a VM it has no opening with, by TCP, UDP
// or ICMP, either way, over IPv4 or IPv6; the opening still answers, and the internet is
// still routed (the "internet" routes the VM subnets back, as NAT went
// with the table). The probes are shown to see a breach: without the
// program's ip rules, vm1 reaches vm2. Then apply makes it all again, and
// a second plan has nothing to do.
func TestRoutingWithoutFirewall(t *testing.T) {
	in, sb := sandboxFor(t, fmt.Sprintf(`[vm.vm1]
subnet = "10.1.0.0/24"
[vm.vm2]
subnet = "10.2.0.0/24"
[vm.web]
subnet = "10.5.0.0/24"
allow = ["vm:db tcp %d"]
[vm.db]
subnet = "10.6.0.0/24"
`, sandbox.Port))
	apply := func() *plan.Plan { t.Helper(); return applyIn(t, sb, in) }
	apply()
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	run := func(ns string, args ...string) {
		t.Helper()
		if out, err := sandbox.Command(ns, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %s %v", strings.Join(args, " "), out, err)
		}
	}
	show := func() string {
		rules, _ := sandbox.Command(sb.Host, "ip", "rule").Output()
		rules6, _ := sandbox.Command(sb.Host, "ip", "-6", "rule").Output()
		routes, _ := sandbox.Command(sb.Host, "ip", "route", "show", "table", "all").Output()
		routes6, _ := sandbox.Command(sb.Host, "ip", "-6", "route", "show", "table", fmt.Sprint(config.RouteTable)).Output()
		return fmt.Sprintf("ip rule:\n%s\nip -6 rule:\n%s\nip route show table all:\n%s\nip -6 route show table %d:\n%s", rules, rules6, routes, config.RouteTable, routes6)
	}
	db, _ := in.VM("db")
	web, _ := in.VM("web")
	toDB := netip.AddrPortFrom(db.Addr, sandbox.Port)
	toDB6 := netip.AddrPortFrom(db.Addr6, sandbox.Port)

	run(sb.Host, "nft", "flush", "ruleset")
	// Without the table there is no NAT: the internet routes the VM
	// subnets to the host's uplink, as an ISP routing them would.
	run(sb.Internet, "ip", "route", "add", "10.0.0.0/8", "via", sandbox.UplinkAddr.Addr().String())
	run(sb.Internet, "ip", "-6", "route", "add", "fd00::/8", "via", sandbox.UplinkAddr6.Addr().String())

	// Every ordered pair but the opening's, by every protocol, at once:
	// a blocked probe waits for its timeout.
	type probe struct {
		from, to, proto string
		ipv6            bool
	}
	var probes []probe
	for _, a := range in.VMs {
		for _, b := range in.VMs {
			if a.Name == b.Name || a.Name == "web" && b.Name == "db" || a.Name == "db" && b.Name == "web" {
				continue
			}
			for _, proto := range []string{"tcp", "udp", "icmp"} {
				probes = append(probes, probe{a.Name, b.Name, proto, false}, probe{a.Name, b.Name, proto, true})
			}
		}
	}
	send := func(p probe) check.Result {
		to, _ := in.VM(p.to)
		ns, addr := sb.VMs[p.from], to.Addr
		if p.ipv6 {
			addr = to.Addr6
		}
		switch p.proto {
		case "tcp":
			return sandbox.TCP(ns, netip.AddrPortFrom(addr, sandbox.Port))
		case "udp":
			return sandbox.UDP(ns, netip.AddrPortFrom(addr, sandbox.Port))
		}
		return sandbox.Ping(ns, addr)
	}
	reached := func() []string {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var out []string
		for _, p := range probes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if send(p).Reached {
					mu.Lock()
					out = append(out, fmt.Sprintf("%s -> %s (%s, IPv6 %v)", p.from, p.to, p.proto, p.ipv6))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return out
	}

	t.Run("no VM reaches another without an opening", func(t *testing.T) {
		if got := reached(); len(got) > 0 {
			t.Errorf("with the firewall's table flushed, %d of %d probes got through: %s\n%s", len(got), len(probes), strings.Join(got, ", "), show())
		}
	})
	t.Run("the opening answers", func(t *testing.T) {
		if r := sandbox.TCP(sb.VMs["web"], toDB); !r.Reached || r.SeenAs != web.Addr.String() {
			t.Errorf("web -> db tcp %d: reached %v, seen as %q (%v); want reached, seen as %s", sandbox.Port, r.Reached, r.SeenAs, r.Err, web.Addr)
		}
		if r := sandbox.TCP(sb.VMs["web"], toDB6); !r.Reached || r.SeenAs != web.Addr6.String() {
			t.Errorf("web -> db tcp %d over IPv6: reached %v, seen as %q (%v); want reached, seen as %s", sandbox.Port, r.Reached, r.SeenAs, r.Err, web.Addr6)
		}
		// Routing cannot tell who opened: the pair's packets pass both
		// ways, and only the firewall judges direction, protocol and port.
		r := sandbox.TCP(sb.VMs["db"], netip.AddrPortFrom(web.Addr, sandbox.Port))
		t.Logf("db -> web (not opened) with the firewall gone: reached %v; routing alone does not judge direction", r.Reached)
	})
	t.Run("the internet is routed", func(t *testing.T) {
		for _, vm := range in.VMs {
			r := sandbox.TCP(sb.VMs[vm.Name], netip.AddrPortFrom(sandbox.InternetAddr, sandbox.Port))
			if !r.Reached || r.SeenAs != vm.Addr.String() {
				t.Errorf("%s -> the internet: reached %v, seen as %q (%v); want reached, seen as %s (no NAT without the table)", vm.Name, r.Reached, r.SeenAs, r.Err, vm.Addr)
			}
			r = sandbox.TCP(sb.VMs[vm.Name], netip.AddrPortFrom(sandbox.InternetAddr6, sandbox.Port))
			if !r.Reached || r.SeenAs != vm.Addr6.String() {
				t.Errorf("%s -> the internet over IPv6: reached %v, seen as %q (%v); want reached, seen as %s (no NAT66 without the table)", vm.Name, r.Reached, r.SeenAs, r.Err, vm.Addr6)
			}
		}
	})
	t.Run("the probes see a breach", func(t *testing.T) {
		for _, vm := range []string{"br-vm1", "br-vm2"} {
			run(sb.Host, "ip", "rule", "del", "priority", fmt.Sprint(config.RulePrefIsolation), "iif", vm)
			run(sb.Host, "ip", "-6", "rule", "del", "priority", fmt.Sprint(config.RulePrefIsolation), "iif", vm)
		}
		vm2, _ := in.VM("vm2")
		for _, to := range []netip.Addr{vm2.Addr, vm2.Addr6} {
			if r := sandbox.UDP(sb.VMs["vm1"], netip.AddrPortFrom(to, sandbox.Port)); !r.Reached {
				t.Errorf("without the program's ip rules and the firewall, vm1 does not reach vm2 at %s (%v): the probes above prove nothing\n%s", to, r.Err, show())
			}
		}
	})
	t.Run("apply makes it all again", func(t *testing.T) {
		run(sb.Internet, "ip", "route", "del", "10.0.0.0/8")
		run(sb.Internet, "ip", "-6", "route", "del", "fd00::/8")
		if p := apply(); len(p.Actions) == 0 {
			t.Error("apply found nothing to do")
		}
		if got := reached(); len(got) > 0 {
			t.Errorf("after apply, %d probes got through: %s", len(got), strings.Join(got, ", "))
		}
		if r := sandbox.TCP(sb.VMs["web"], toDB); !r.Reached {
			t.Errorf("after apply, web does not reach db's opened port: %v", r.Err)
		}
		if p := apply(); len(p.Actions) > 0 {
			t.Errorf("a second apply changes %q", p.Actions)
		}
	})
}

// TestRoutingOwnTableOnly: a route the program did not make in its table
// stops plan (it could open a VM subnet), and the program's rules and
// routes are the only ones it changes: someone else's rule at the same
// priority, and routes in other tables, stay.
func TestRoutingOwnTableOnly(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
	ns := testenv.NetNS(t)
	ipn := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
		}
	}
	ipn("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
	ipn("addr", "add", "192.0.2.2/24", "dev", "eth0")
	ipn("rule", "add", "priority", "5101", "iif", "br-vm1", "lookup", "100")
	ipn("route", "add", "blackhole", "10.9.0.0/24", "table", "100")
	in, err := config.Parse("infra.toml", []byte(fmt.Sprintf("[host]\nuplink = \"eth0\"\nrun_dir = %q\n[host.tailscale]\nenabled = false\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n", testenv.ShortDir(t))))
	if err != nil {
		t.Fatal(err)
	}
	err = sandbox.Do(ns, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	})
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := sandbox.Command(ns, "ip", "rule").Output()
	for _, want := range []string{"5101:\tfrom all iif br-vm1 lookup 100", "5101:\tfrom all iif br-vm1 lookup 7173741 proto 109"} {
		if !strings.Contains(string(rules), want) {
			t.Errorf("ip rule lacks %q:\n%s", want, rules)
		}
	}
	if routes, _ := sandbox.Command(ns, "ip", "route", "show", "table", "100").Output(); !strings.Contains(string(routes), "blackhole 10.9.0.0/24") {
		t.Errorf("table 100 changed:\n%s", routes)
	}

	ipn("route", "add", "throw", "10.1.0.0/25", "table", fmt.Sprint(config.RouteTable))
	err = sandbox.Do(ns, func() error {
		_, err := plan.Host(in)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "routing table 7173741, which microvm owns") || !strings.Contains(err.Error(), "10.1.0.0/25") {
		t.Errorf("plan with a foreign route in the program's table: %v", err)
	}
}

// sandboxFor parses a file of one host, uplink eth0, without Tailscale,
// with the VM tables vms, and makes a sandbox for it.
func sandboxFor(t *testing.T, vms string) (*config.Infra, *sandbox.Sandbox) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
	src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nrun_dir = %q\n[host.tailscale]\nenabled = false\n", testenv.ShortDir(t)) + vms
	in, err := config.Parse("infra.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, in)
	return in, sb
}

// applyIn plans and applies in's host part in the sandbox's host.
func applyIn(t *testing.T, sb *sandbox.Sandbox, in *config.Infra) *plan.Plan {
	t.Helper()
	var p *plan.Plan
	err := sandbox.Do(sb.Host, func() error {
		var err error
		if p, err = plan.Host(in); err != nil {
			return err
		}
		return p.Apply(io.Discard)
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
