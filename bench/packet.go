package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

type packetResult struct {
	n               int
	ruleset         string
	rules           int
	gbps, retrans   float64
	rttMin, rttAvg  float64 // ms
	rttMax, rttMdev float64
	tcpConnect      time.Duration
	err             string
}

// runPacket measures the packet path from the first VM's stand-in to the
// internet server, through the host's bridge, forwarding, firewall and NAT.
func runPacket(args []string) error {
	for _, c := range []string{"iperf3", "ping", "iptables-restore"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not installed (apt-get install iperf3 iputils-ping iptables)", c)
		}
	}
	m := readMachine("")
	fmt.Printf("packet path; load average at start %s\n\n", m.Load)
	var rs []packetResult
	for _, n := range []int{4, 250} {
		res, err := packetAt(n)
		if err != nil {
			return fmt.Errorf("N=%d: %w", n, err)
		}
		rs = append(rs, res...)
	}
	t := table{head: []string{"N VMs", "firewall", "rules", "TCP throughput (iperf3, 5 s)", "TCP retransmits", "ping RTT min / avg / max / mdev (500 pings)", "TCP connect (median of 50)"}}
	for _, r := range rs {
		if r.err != "" {
			t.add(r.n, r.ruleset, r.rules, "error: "+r.err, "", "", "")
			continue
		}
		t.add(r.n, r.ruleset, r.rules, rate(r.gbps), fmt.Sprintf("%.0f", r.retrans),
			fmt.Sprintf("%.3f / %.3f / %.3f / %.3f ms", r.rttMin, r.rttAvg, r.rttMax, r.rttMdev), ms3(r.tcpConnect))
	}
	fmt.Println()
	t.print(os.Stdout)

	var b strings.Builder
	b.WriteString("## Packet path\n\n")
	b.WriteString("Command: `go run ./bench packet` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	b.WriteString(`
From vm1's stand-in (a namespace on a veth in br-vm1, where the VM's TAP would be) to the internet server
(203.0.113.10, in its own namespace behind the host's uplink): bridge, routing, the firewall's forward chain and NAT, as a
VM's packets take them. The same sandbox is measured four ways, one after the other:
"microvm" is the host part as apply makes it: the program's nftables table (isolation by sets) and its policy routing
(one ip rule per VM, which the kernel walks in order for every packet it routes, before the main table); "microvm, no
policy routing" is the same with the program's ip rules deleted; "seed" replaces the table with the seed's
firewall: iptables FORWARD DROP rules for every ordered pair of bridges (N×(N−1)) and a MASQUERADE rule, with
iptables 1.8.9 (nf_tables backend), whose rules a packet walks one by one; "NAT only" has the MASQUERADE rule and
nothing else, the floor. Throughput is one iperf3 TCP stream for 5 s (stand-in → internet, ` + "`iperf3 -c -t 5 -J`" + `);
latency is ` + "`ping -c 500 -i 0.002`" + `; "TCP connect" is the median time of 50 TCP handshakes to the internet server
(every handshake's first packet goes through the forward chain before conntrack knows the flow). Both the sender and
the receiver share this machine's cores with the kernel's forwarding, so throughput is CPU-bound and only the ratios
between rows of one run mean something.

`)
	b.WriteString(t.markdown())
	b.WriteString("\n" + packetSummary(rs))
	return writeSection("packet", b.String())
}

func packetSummary(rs []packetResult) string {
	var b strings.Builder
	get := func(n int, rs0 string) *packetResult {
		for i := range rs {
			if rs[i].n == n && rs[i].ruleset == rs0 && rs[i].err == "" {
				return &rs[i]
			}
		}
		return nil
	}
	for _, n := range []int{4, 250} {
		p, s := get(n, "microvm"), get(n, "seed")
		if p == nil || s == nil {
			continue
		}
		if q := get(n, "microvm, no policy routing"); q != nil {
			fmt.Fprintf(&b, "- N = %d: with policy routing (%d ip rules) / without: throughput %s / %s (%.2f×), ping avg %.3f ms / %.3f ms.\n",
				n, n, rate(p.gbps), rate(q.gbps), p.gbps/q.gbps, p.rttAvg, q.rttAvg)
		}
		fmt.Fprintf(&b, "- N = %d: throughput microvm / seed = %s / %s (%.2f×); ping avg %.3f ms / %.3f ms (%.1f×); TCP connect %s / %s.\n",
			n, rate(p.gbps), rate(s.gbps), p.gbps/s.gbps, p.rttAvg, s.rttAvg, s.rttAvg/p.rttAvg, ms3(p.tcpConnect), ms3(s.tcpConnect))
	}
	return b.String()
}

func packetAt(n int) ([]packetResult, error) {
	dir, err := os.MkdirTemp("", "bench-packet-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	in, _, err := parseInfra(dir, infraTOML(n, dir+"/state", dir+"/run", "", false))
	if err != nil {
		return nil, err
	}
	sb, err := sandbox.New(in)
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	var rules int
	err = sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		if err := p.Apply(io.Discard); err != nil {
			return err
		}
		st, err := firewall.Current()
		if err != nil {
			return err
		}
		rules = st.Rules
		return nil
	})
	if err != nil {
		return nil, err
	}
	fmt.Printf("N=%d: applied; adding stand-ins\n", n)
	if err := sb.AddStandIns(); err != nil {
		return nil, err
	}
	if err := sb.Serve(); err != nil {
		return nil, err
	}
	srv := sandbox.Command(sb.Internet, "iperf3", "-s")
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)

	from := sb.VMs[in.VMs[0].Name]
	var out []packetResult
	measure := func(name string, rules int) {
		r := measurePath(from, n, name, rules)
		fmt.Printf("N=%d %-8s %d rules: %s, ping avg %.3f ms, connect %s %s\n", n, name, rules, rate(r.gbps), r.rttAvg, ms3(r.tcpConnect), r.err)
		out = append(out, r)
	}
	measure("microvm", rules)

	// The same table without the second layer, policy routing: what the
	// kernel's walk through one ip rule per VM costs.
	if err := deleteRules(sb.Host); err != nil {
		return out, err
	}
	measure("microvm, no policy routing", rules)

	// The design's firewall instead of the program's table.
	seed := strings.Replace(seedRules(in.VMs), "COMMIT\n", "COMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/8 -o "+in.Host.Uplink+" -j MASQUERADE\nCOMMIT\n", 1)
	err = sandbox.Do(sb.Host, func() error {
		if out, err := exec.Command("nft", "delete", "table", firewall.Family, firewall.Table).CombinedOutput(); err != nil {
			return fmt.Errorf("nft delete table: %s: %w", out, err)
		}
		return iptablesRestore(seed, false)
	})
	if err != nil {
		return out, err
	}
	measure("seed", n*(n-1))

	natOnly := "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.0.0.0/8 -o " + in.Host.Uplink + " -j MASQUERADE\nCOMMIT\n"
	if err := sandbox.Do(sb.Host, func() error { return iptablesRestore(natOnly, false) }); err != nil {
		return out, err
	}
	measure("NAT only", 1)
	return out, nil
}

func rate(gbps float64) string {
	if gbps < 1 {
		return fmt.Sprintf("%.1f Mbit/s", gbps*1000)
	}
	return fmt.Sprintf("%.2f Gbit/s", gbps)
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Nanoseconds())/1e6) }

var pingRTT = regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms`)

func measurePath(from string, n int, name string, rules int) packetResult {
	r := packetResult{n: n, ruleset: name, rules: rules}
	target := sandbox.InternetAddr.String()
	// warm up: ARP, conntrack
	sandbox.Command(from, "ping", "-c", "3", "-i", "0.2", target).Run()

	out, err := sandbox.Command(from, "iperf3", "-c", target, "-t", "5", "-J").Output()
	if err != nil {
		r.err = fmt.Sprintf("iperf3: %v %s", err, firstLine(string(out)))
		return r
	}
	var ip struct {
		End struct {
			SumSent struct {
				Retransmits float64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &ip); err != nil {
		r.err = "iperf3 output: " + err.Error()
		return r
	}
	r.gbps = ip.End.SumReceived.BitsPerSecond / 1e9
	r.retrans = ip.End.SumSent.Retransmits

	out, err = sandbox.Command(from, "ping", "-q", "-c", "500", "-i", "0.002", target).Output()
	if m := pingRTT.FindStringSubmatch(string(out)); m != nil {
		fmt.Sscanf(m[1], "%g", &r.rttMin)
		fmt.Sscanf(m[2], "%g", &r.rttAvg)
		fmt.Sscanf(m[3], "%g", &r.rttMax)
		fmt.Sscanf(m[4], "%g", &r.rttMdev)
	} else {
		r.err = fmt.Sprintf("ping: %v %s", err, firstLine(string(out)))
		return r
	}

	var connects []time.Duration
	err = sandbox.Do(from, func() error {
		addr := net.JoinHostPort(target, fmt.Sprint(sandbox.Port))
		for range 50 {
			start := time.Now()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("TCP to the internet server: %w", err)
			}
			c.Close()
			connects = append(connects, d)
		}
		return nil
	})
	if err != nil {
		r.err = err.Error()
		return r
	}
	r.tcpConnect = median(connects)
	return r
}
