package main

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

// flushRounds is how many times each setup has its ruleset flushed.
const flushRounds = 10

// flushPath is a path a flood takes across a flush: from a VM's stand-in
// to an echo server.
type flushPath struct {
	name string
	from string // a VM
	to   netip.AddrPort
}

// flushRound is what one flush let through.
type flushRound struct {
	down    time.Duration // from the watcher hearing of the flush to the VM ports down
	through []int         // datagrams answered, per path
	last    []time.Duration
}

// runFlush measures the window `nft flush ruleset` opens: how many of the
// one-millisecond probes along paths that must stay closed are answered,
// with the watcher of `microvm host` keeping the table, first with the
// host part as apply makes it (the firewall and policy routing), then with
// the program's ip rules deleted (the firewall and its watcher alone).
func runFlush(args []string) error {
	m := readMachine("")
	fmt.Printf("flush window; load average at start %s\n\n", m.Load)
	dir, err := os.MkdirTemp("", "bench-flush-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	run, err := os.MkdirTemp("/run", "mvb-flush-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(run)
	in, _, err := parseInfra(dir, fmt.Sprintf(`[host]
uplink = "eth0"
state_dir = %q
run_dir = %q
[host.tailscale]
enabled = false
[vm.vm1]
subnet = "10.1.0.0/24"
[vm.vm2]
subnet = "10.2.0.0/24"
[vm.web]
subnet = "10.5.0.0/24"
allow = ["vm:db udp %d"]
[vm.db]
subnet = "10.6.0.0/24"
`, dir+"/state", run, sandbox.EchoPort))
	if err != nil {
		return err
	}
	sb, err := sandbox.New(in)
	if err != nil {
		return err
	}
	defer sb.Close()
	if err := sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	}); err != nil {
		return err
	}
	if err := sb.AddStandIns(); err != nil {
		return err
	}
	for _, ns := range append([]string{sb.Host}, sb.VMs["vm1"], sb.VMs["vm2"], sb.VMs["web"], sb.VMs["db"]) {
		if err := sandbox.Echo(ns, ""); err != nil {
			return err
		}
	}
	if err := sandbox.Echo(sb.Internet, sandbox.InternetAddr.String()); err != nil {
		return err
	}
	addr := func(vm string, port uint16) netip.AddrPort {
		v, _ := in.VM(vm)
		return netip.AddrPortFrom(v.Addr, port)
	}
	vm1, _ := in.VM("vm1")
	paths := []flushPath{
		{"vm1 → vm2 (UDP)", "vm1", addr("vm2", sandbox.EchoPort)},
		{"vm2 → vm1 (UDP)", "vm2", addr("vm1", sandbox.EchoPort)},
		{"vm1 → vm2 (ICMP echo)", "vm1", addr("vm2", 0)},
		{"db → web (UDP; web may open db, not the reverse)", "db", addr("web", sandbox.EchoPort)},
		{"vm1 → its gateway, the host (UDP)", "vm1", netip.AddrPortFrom(vm1.Gateway, sandbox.EchoPort)},
	}
	// The opening answers, and every path above is closed, before any
	// flush: what a round counts is what the flush let through.
	if got, err := sandbox.Flood(sb.VMs["web"], addr("db", sandbox.EchoPort), 200*time.Millisecond, nil); err != nil || len(got) == 0 {
		return fmt.Errorf("web does not reach db through its opening (%v)", err)
	}
	for _, p := range paths {
		if got, err := sandbox.Flood(sb.VMs[p.from], p.to, 200*time.Millisecond, nil); err != nil || len(got) > 0 {
			return fmt.Errorf("%s is open before any flush (%d answers, %v)", p.name, len(got), err)
		}
	}

	restored := make(chan firewall.Restore, 10)
	w := &firewall.Watcher{Host: in.Host, Logf: func(string, ...any) {}, Restored: func(r firewall.Restore) { restored <- r }}
	ready := make(chan struct{})
	w.Ready = func() { close(ready) }
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- sandbox.Do(sb.Host, func() error { return w.Run(stop) }) }()
	defer func() { close(stop); <-done }()
	select {
	case <-ready:
	case err := <-done:
		return fmt.Errorf("the watcher stopped: %v", err)
	}

	setups := []string{"firewall + policy routing", "firewall alone"}
	results := map[string][]flushRound{}
	for i, setup := range setups {
		if i == 1 {
			if err := deleteRules(sb.Host); err != nil {
				return err
			}
		}
		for round := range flushRounds {
			r, err := flushOnce(sb, paths, restored)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", setup, round+1, err)
			}
			fmt.Printf("%s, round %d: ports down %s after the flush was heard; through: %v\n", setup, round+1, ms(r.down), r.through)
			results[setup] = append(results[setup], r)
		}
	}

	t := table{head: []string{"what keeps the VMs apart", "path", "flushes that let a probe through", "probes answered per flush: median (min–max)", "the last one sent after the flush was heard, at most"}}
	for _, setup := range setups {
		rs := results[setup]
		for i, p := range paths {
			var n []int
			var rounds int
			var last time.Duration
			for _, r := range rs {
				n = append(n, r.through[i])
				if r.through[i] > 0 {
					rounds++
				}
				last = max(last, r.last[i])
			}
			sort.Ints(n)
			lastText := "-"
			if rounds > 0 {
				lastText = ms(last)
			}
			t.add(setup, p.name, fmt.Sprintf("%d of %d", rounds, len(rs)), fmt.Sprintf("%d (%d–%d)", n[len(n)/2], n[0], n[len(n)-1]), lastText)
		}
	}
	var downs []time.Duration
	for _, setup := range setups {
		for _, r := range results[setup] {
			downs = append(downs, r.down)
		}
	}
	sort.Slice(downs, func(i, j int) bool { return downs[i] < downs[j] })
	fmt.Println()
	t.print(os.Stdout)

	var b strings.Builder
	b.WriteString("## Flush window\n\n")
	b.WriteString("Command: `go run ./bench flush` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, `
Four VMs with namespaces standing in for them (vm1, vm2, web and db, where web may open db's UDP port %d), the
host part applied, and the watcher of `+"`microvm host`"+` keeping the firewall's table. Along each path below a
numbered UDP datagram (or ICMP echo request) goes every millisecond to an echo server, and each answer says which
probe it answers; then `+"`nft flush ruleset`"+` runs in the host's namespace, the watcher hears of it, sets the VM
ports down and loads the table again. A probe answered is one that crossed while the table was gone. %d flushes for
each of two setups, one after the other in the same sandbox: the host part as apply makes it, the firewall and
[policy routing](../README.md#what-the-firewall-does), then the same with the program's ip rules deleted, the
firewall and its watcher alone (as before policy routing). The VM ports went down %s to %s (median %s) after the
watcher heard of a flush.

`, sandbox.EchoPort, flushRounds, ms(downs[0]), ms(downs[len(downs)-1]), ms(median(downs)))
	b.WriteString(t.markdown())
	b.WriteString(`
Policy routing holds VM↔VM without the table: no probe crosses between two VMs without an opening (routing does
not look at the protocol: UDP and ICMP alike). It does not judge direction within a pair that has an opening (db → web crosses in the window, as it
must have a route for its replies to web), nor keep a VM from the host's own addresses: there the window is the
watcher's, a few milliseconds.
`)
	return writeSection("flush", b.String())
}

// flushOnce floods every path, flushes the ruleset, waits for the
// watcher's repair, and counts what got through.
func flushOnce(sb *sandbox.Sandbox, paths []flushPath, restored <-chan firewall.Restore) (flushRound, error) {
	stop := make(chan struct{})
	answered := make([][]time.Time, len(paths))
	errs := make(chan error, len(paths))
	for i, p := range paths {
		go func() {
			got, err := sandbox.Flood(sb.VMs[p.from], p.to, time.Minute, stop)
			answered[i] = got
			errs <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	out, err := sandbox.Command(sb.Host, "nft", "flush", "ruleset").CombinedOutput()
	var r firewall.Restore
	if err == nil {
		select {
		case r = <-restored:
		case <-time.After(5 * time.Second):
			err = fmt.Errorf("no repair 5 s after the flush")
		}
	} else {
		err = fmt.Errorf("nft flush ruleset: %s: %w", out, err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	for range paths {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return flushRound{}, err
	}
	if r.Err != "" {
		return flushRound{}, fmt.Errorf("the watcher could not load the table: %s", r.Err)
	}
	res := flushRound{down: r.Closed.Sub(r.Heard), through: make([]int, len(paths)), last: make([]time.Duration, len(paths))}
	for i := range paths {
		res.through[i] = len(answered[i])
		for _, sent := range answered[i] {
			res.last[i] = max(res.last[i], sent.Sub(r.Heard))
		}
	}
	// The ports are up again; a stand-in asks for its gateway's MAC again
	// within a second, after which traffic flows.
	for began := time.Now(); ; {
		got, err := sandbox.Flood(sb.VMs["vm1"], netip.AddrPortFrom(sandbox.InternetAddr, sandbox.EchoPort), 100*time.Millisecond, nil)
		if err != nil {
			return res, err
		}
		if len(got) > 0 {
			break
		}
		if time.Since(began) > 5*time.Second {
			return res, fmt.Errorf("vm1 does not reach the internet 5 s after the repair")
		}
	}
	return res, nil
}

// deleteRules deletes the program's ip rules in namespace ns, leaving its
// table of blackholes unused.
func deleteRules(ns string) error {
	for _, pref := range []int{config.RulePrefOpenings, config.RulePrefIsolation} {
		for {
			out, err := sandbox.Command(ns, "ip", "rule", "del", "priority", fmt.Sprint(pref), "protocol", fmt.Sprint(config.RouteProto)).CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "No such file") {
					break
				}
				return fmt.Errorf("ip rule del priority %d: %s: %w", pref, out, err)
			}
		}
	}
	out, _ := sandbox.Command(ns, "ip", "rule").Output()
	if strings.Contains(string(out), fmt.Sprintf("proto %d", config.RouteProto)) {
		return fmt.Errorf("the program's ip rules are still there:\n%s", out)
	}
	return nil
}
