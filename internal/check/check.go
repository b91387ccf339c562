// Package check proves the design's network promises on a running setup by
// sending real packets: every VM reaches the internet through NAT, no VM
// reaches another VM or another VM's gateway by TCP, UDP or ICMP, no VM
// reaches the host's SSH port, and the host reaches every VM.
//
// How a packet is sent "from a VM" is the Prober's business: from a
// stand-in's namespace in the sandbox, or from inside a real guest.
package check

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Result is the outcome of one probe. Reached means the target answered
// (a reply, a TCP reset, an ICMP port-unreachable: the packet got through).
// SeenAs is the source address a server reported seeing.
type Result struct {
	Reached bool
	Refused bool // reached, and refused: a reset or a port-unreachable, no server
	SeenAs  string
	Err     error
}

// Prober sends probes. from is a VM name, or Host for the host itself.
type Prober interface {
	TCP(from string, to netip.AddrPort) Result
	UDP(from string, to netip.AddrPort) Result
	Ping(from string, to netip.Addr) Result
}

// Host is the "from" of probes sent by the host itself.
const Host = "host"

// Outside is the "from" of probes sent from beyond the host's uplink (the
// sandbox's internet), to the ports the VMs publish there.
const Outside = "internet"

// PrivateColumn is the column of Target.Private: "internet only".
const PrivateColumn = "lan, metadata"

// Target describes where the probes go. Servers answering "seen ADDR" on
// Port (TCP and UDP) must run on the internet target and in every VM.
type Target struct {
	Internet netip.Addr // a server on the internet
	Port     uint16     // TCP and UDP port of every test server
	Uplink   netip.Addr // the address the internet must see (NAT)
	HostSSH  []netip.Addr
	// Private are servers beyond the internet that no VM may reach: hosts
	// on the uplink's network, a cloud's metadata server. Probed on Port
	// when given; the column is left out otherwise.
	Private []netip.Addr
	// OutsideFrom, when valid, is the address probes from Outside come
	// from: the ports the VMs publish on Uplink are probed from there (a
	// row "internet"), each must answer unless its from list leaves that
	// address out.
	OutsideFrom netip.Addr
}

// Cell is one verdict of the matrix.
type Cell struct {
	Text string // what a person reads: "ok", "blocked", "REACHED (udp)"
	OK   bool   // whether it is what the promise says
}

// Report is the matrix: Rows[from][column].
type Report struct {
	Columns []string
	Rows    []string
	Cells   map[string]map[string]Cell
}

// OK reports whether every promise held.
func (r *Report) OK() bool {
	for _, row := range r.Cells {
		for _, c := range row {
			if !c.OK {
				return false
			}
		}
	}
	return true
}

// Run probes every promise, in parallel (a blocked probe waits for its
// timeout, so one at a time would be slow).
func Run(in *config.Infra, p Prober, t Target) *Report {
	r := &Report{Cells: map[string]map[string]Cell{}}
	r.Columns = append(r.Columns, "internet")
	for _, vm := range in.VMs {
		r.Columns = append(r.Columns, vm.Name)
	}
	r.Columns = append(r.Columns, "own gateway", "other gateways", "host ssh")
	if len(t.Private) > 0 {
		r.Columns = append(r.Columns, PrivateColumn)
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	set := func(row, col string, c Cell) {
		mu.Lock()
		defer mu.Unlock()
		if r.Cells[row] == nil {
			r.Cells[row] = map[string]Cell{}
		}
		r.Cells[row][col] = c
	}
	do := func(row, col string, f func() Cell) {
		wg.Add(1)
		go func() { defer wg.Done(); set(row, col, f()) }()
	}

	for _, vm := range in.VMs {
		from := vm.Name
		r.Rows = append(r.Rows, from)
		do(from, "internet", func() Cell {
			res := retry(func() Result { return p.TCP(from, netip.AddrPortFrom(t.Internet, t.Port)) })
			switch {
			case !res.Reached:
				return Cell{"NO INTERNET: " + errText(res.Err), false}
			case res.SeenAs == "":
				// An ordinary server (1.1.1.1:443) does not say whom it
				// saw; a test server does, and proves the NAT.
				return Cell{"ok", true}
			case res.SeenAs != t.Uplink.String():
				return Cell{"NOT NATED: seen as " + res.SeenAs, false}
			}
			return Cell{"ok, seen as " + res.SeenAs, true}
		})
		for _, other := range in.VMs {
			if other.Name == vm.Name {
				set(from, other.Name, Cell{"-", true})
				continue
			}
			do(from, other.Name, func() Cell { return pair(p, &vm, &other, t.Port) })
		}
		do(from, "own gateway", func() Cell {
			if res := retry(func() Result { return p.Ping(from, vm.Gateway) }); !res.Reached {
				return Cell{"NO PING: " + errText(res.Err), false}
			}
			return Cell{"ping ok", true}
		})
		do(from, "other gateways", func() Cell {
			probes := map[string]func() bool{}
			for _, other := range in.VMs {
				if other.Name != vm.Name {
					probes[other.Gateway.String()] = func() bool { return !blocked(p, from, other.Gateway, t.Port).OK }
				}
			}
			if got := anyReached(probes); len(got) > 0 {
				return Cell{"REACHED " + strings.Join(got, ","), false}
			}
			return Cell{"blocked", true}
		})
		if len(t.Private) > 0 {
			do(from, PrivateColumn, func() Cell {
				probes := map[string]func() bool{}
				for _, a := range t.Private {
					probes[a.String()] = func() bool { return !blocked(p, from, a, t.Port).OK }
				}
				if got := anyReached(probes); len(got) > 0 {
					return Cell{"REACHED " + strings.Join(got, ","), false}
				}
				return Cell{"blocked", true}
			})
		}
		do(from, "host ssh", func() Cell {
			probes := map[string]func() bool{}
			for _, a := range append([]netip.Addr{vm.Gateway}, t.HostSSH...) {
				probes[a.String()+":22"] = func() bool { return p.TCP(from, netip.AddrPortFrom(a, 22)).Reached }
			}
			if got := anyReached(probes); len(got) > 0 {
				return Cell{"REACHED " + strings.Join(got, ","), false}
			}
			return Cell{"blocked", true}
		})
	}

	if t.OutsideFrom.IsValid() && anyPublished(in) {
		r.Rows = append(r.Rows, Outside)
		for _, col := range r.Columns {
			set(Outside, col, Cell{"-", true})
		}
		for _, vm := range in.VMs {
			if len(vm.Publish) > 0 {
				do(Outside, vm.Name, func() Cell { return published(p, &vm, t) })
			}
		}
	}

	r.Rows = append(r.Rows, Host)
	for _, vm := range in.VMs {
		do(Host, vm.Name, func() Cell {
			tcp := retry(func() Result { return p.TCP(Host, netip.AddrPortFrom(vm.Addr, t.Port)) })
			ping := retry(func() Result { return p.Ping(Host, vm.Addr) })
			switch {
			case !tcp.Reached:
				return Cell{"NO TCP: " + errText(tcp.Err), false}
			case !ping.Reached:
				return Cell{"NO PING: " + errText(ping.Err), false}
			}
			return Cell{"ok", true}
		})
	}
	for _, col := range []string{"internet", "own gateway", "other gateways", "host ssh", PrivateColumn} {
		set(Host, col, Cell{"-", true})
	}
	wg.Wait()
	return r
}

// pair is the cell of from to other: blocked in every protocol, but for
// the openings from's allow list makes to other, which must answer while
// the rest stays blocked.
func pair(p Prober, from, other *config.VM, port uint16) Cell {
	var opens []config.Allow
	for _, a := range from.Allow {
		if a.VM == other.Name {
			opens = append(opens, a)
		}
	}
	if len(opens) == 0 {
		return blocked(p, from.Name, other.Addr, port)
	}
	covers := func(proto string, port uint16) bool {
		for _, a := range opens {
			if a.Proto == "" || a.Proto == proto && len(a.Ports) == 0 {
				return true
			}
			for _, r := range a.Ports {
				if a.Proto == proto && r.From <= port && port <= r.To {
					return true
				}
			}
		}
		return false
	}
	var bad, good []string
	for _, a := range opens {
		probe, what := func() Result { return p.TCP(from.Name, netip.AddrPortFrom(other.Addr, port)) }, "all"
		switch {
		case a.Proto == "icmp":
			probe, what = func() Result { return p.Ping(from.Name, other.Addr) }, "icmp"
		case a.Proto != "" && len(a.Ports) > 0:
			to := netip.AddrPortFrom(other.Addr, a.Ports[0].From)
			what = fmt.Sprintf("%s %d", a.Proto, a.Ports[0].From)
			if a.Proto == "udp" {
				probe = func() Result { return p.UDP(from.Name, to) }
			} else {
				probe = func() Result { return p.TCP(from.Name, to) }
			}
		case a.Proto == "udp":
			probe, what = func() Result { return p.UDP(from.Name, netip.AddrPortFrom(other.Addr, port)) }, "udp"
		case a.Proto == "tcp":
			what = "tcp"
		}
		if res := retry(probe); res.Reached {
			good = append(good, what+" ok")
		} else {
			bad = append(bad, "NO "+what)
		}
	}
	rest := map[string]func() bool{}
	if !covers("tcp", port) {
		rest["tcp"] = func() bool { return p.TCP(from.Name, netip.AddrPortFrom(other.Addr, port)).Reached }
	}
	if !covers("udp", port) {
		rest["udp"] = func() bool { return p.UDP(from.Name, netip.AddrPortFrom(other.Addr, port)).Reached }
	}
	if !covers("icmp", 0) {
		rest["icmp"] = func() bool { return p.Ping(from.Name, other.Addr).Reached }
	}
	if got := anyReached(rest); len(got) > 0 {
		bad = append(bad, "REACHED ("+strings.Join(got, ",")+")")
	}
	if len(bad) > 0 {
		return Cell{strings.Join(append(bad, good...), ", "), false}
	}
	text := strings.Join(good, ", ")
	if len(rest) > 0 {
		text += ", rest blocked"
	}
	return Cell{text, true}
}

// anyPublished reports whether a VM of in publishes a port.
func anyPublished(in *config.Infra) bool {
	for _, vm := range in.VMs {
		if len(vm.Publish) > 0 {
			return true
		}
	}
	return false
}

// published is the cell of the outside to vm: each TCP port it publishes
// answers on the host's uplink address, unless its from list leaves the
// outside's address out (then the host's own answer, a refusal, is all
// there is: no connection). UDP is not probed: a silent service cannot be
// told from a blocked one.
func published(p Prober, vm *config.VM, t Target) Cell {
	var bad, good []string
	for _, pub := range vm.Publish {
		if pub.Proto != "tcp" {
			continue
		}
		open := len(pub.From) == 0
		for _, f := range pub.From {
			open = open || f.Contains(t.OutsideFrom)
		}
		to := netip.AddrPortFrom(t.Uplink, pub.HostPort)
		what := fmt.Sprintf("tcp %d", pub.HostPort)
		if open {
			if res := retry(func() Result { return p.TCP(Outside, to) }); res.Reached {
				good = append(good, what+" ok")
			} else {
				bad = append(bad, "NO "+what)
			}
			continue
		}
		if res := p.TCP(Outside, to); res.Reached && !res.Refused {
			bad = append(bad, "REACHED "+what+" (not in its from)")
		} else {
			good = append(good, what+" closed to it")
		}
	}
	if len(bad) > 0 {
		return Cell{strings.Join(append(bad, good...), ", "), false}
	}
	if len(good) == 0 {
		return Cell{"-", true}
	}
	return Cell{strings.Join(good, ", "), true}
}

// retry gives a probe that should get through two more chances: a guest
// under heavy load (emulated CPUs) can miss a timeout. Probes that should
// be blocked are not retried; another try could only reveal more.
func retry(probe func() Result) Result {
	var r Result
	for range 3 {
		if r = probe(); r.Reached {
			break
		}
	}
	return r
}

// blocked probes TCP, UDP and ICMP from a VM to addr, at once; all three
// must go unanswered.
func blocked(p Prober, from string, addr netip.Addr, port uint16) Cell {
	got := anyReached(map[string]func() bool{
		"tcp":  func() bool { return p.TCP(from, netip.AddrPortFrom(addr, port)).Reached },
		"udp":  func() bool { return p.UDP(from, netip.AddrPortFrom(addr, port)).Reached },
		"icmp": func() bool { return p.Ping(from, addr).Reached },
	})
	if len(got) > 0 {
		return Cell{"REACHED (" + strings.Join(got, ",") + ")", false}
	}
	return Cell{"blocked", true}
}

// anyReached runs the probes in parallel and returns the names of those
// that got an answer, sorted.
func anyReached(probes map[string]func() bool) []string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var got []string
	for name, probe := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if probe() {
				mu.Lock()
				got = append(got, name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Strings(got)
	return got
}

func errText(err error) string {
	if err == nil {
		return "no answer"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// Print writes the matrix, one row per source.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "from \\ to\t%s\n", strings.Join(r.Columns, "\t"))
	for _, row := range r.Rows {
		cells := make([]string, len(r.Columns))
		for i, col := range r.Columns {
			cells[i] = r.Cells[row][col].Text
		}
		fmt.Fprintf(tw, "%s\t%s\n", row, strings.Join(cells, "\t"))
	}
	tw.Flush()
}
