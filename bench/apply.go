package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

type applyResult struct {
	n                           int
	actions                     int
	first, noop, addOne, fwOnly time.Duration
	firstMin                    time.Duration
	rules, elements             int
	seedLoad, seedAdd, seedCLI  time.Duration
	seedRules                   int
	byKind                      map[string]time.Duration // first apply's time by action type
	kindCount                   map[string]int           // and how many actions of each
	noopPhases                  []phase                  // one no-op plan, part by part
	addPlan, addActions         time.Duration            // add 1 VM: planning, and applying its actions
}

// phase is one part of a plan and the time it took.
type phase struct {
	name string
	d    time.Duration
}

// planPhases plans in as plan.Host does, part by part, timing each: where
// a no-op plan's time goes.
func planPhases(in *config.Infra) ([]phase, error) {
	var out []phase
	step := func(name string, f func() error) error {
		start := time.Now()
		err := f()
		out = append(out, phase{name, time.Since(start)})
		return err
	}
	var host *hostnet.Observed
	if err := step("read links, addresses, routes, rules, sysctls, users (hostnet.Observe)", func() (err error) {
		host, err = hostnet.Observe(in)
		return err
	}); err != nil {
		return nil, err
	}
	if err := step("check the model against them (Check)", func() error { return host.Check(in) }); err != nil {
		return nil, err
	}
	if err := step("storage", func() error { _, err := storage.For(in.Host).Diff(in); return err }); err != nil {
		return nil, err
	}
	if err := step("firewall: render, generation, other tables' chains (firewall.Diff)", func() error { _, err := firewall.Diff(in); return err }); err != nil {
		return nil, err
	}
	if err := step("links, users, routing: decide (Diff)", func() error { host.Diff(in); return nil }); err != nil {
		return nil, err
	}
	err := step("Tailscale", func() error { tailscale.Diff(in); return nil })
	return out, err
}

// runApply measures the host part of `microvm apply` as the VM count grows,
// and beside it the design's N×(N−1) iptables FORWARD DROP rules.
func runApply(args []string) error {
	flags := flag.NewFlagSet("apply", flag.ContinueOnError)
	cpuProfile := flags.String("cpuprofile", "", "write a CPU profile of the whole run to `file` (go tool pprof)")
	only := flags.Int("n", 0, "measure only this many VMs, and print the figures without writing docs/ (for a quick look)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ns := []int{4, 16, 64, 250}
	if *only > 0 {
		ns = []int{*only}
	}
	m := readMachine("")
	fmt.Printf("apply at scale; load average at start %s\n\n", m.Load)
	var rs []applyResult
	for _, n := range ns {
		var reps []applyResult
		for i := range applyReps {
			// Deleting the previous sandbox's namespaces tears their links down
			// in the kernel afterwards, holding the lock every link change
			// takes: let that finish before timing the next apply.
			time.Sleep(settleAfterClose)
			r, err := applyAt(n, i == 0)
			if err != nil {
				return fmt.Errorf("N=%d: %w", n, err)
			}
			reps = append(reps, r)
		}
		r := medianResult(reps)
		for i, rep := range reps {
			fmt.Printf("N=%d run %d: first apply %s:", n, i+1, ms(rep.first))
			for k, d := range rep.byKind {
				fmt.Printf(" %s %s", strings.TrimPrefix(k, "*"), ms(d))
			}
			fmt.Println()
		}
		fmt.Printf("N=%d: first apply %s, no-op %s, add one %s (plan %s); %d rules; seed: %d rules loaded in %s\n",
			n, ms(r.first), ms(r.noop), ms(r.addOne), ms(r.addPlan), r.rules, r.seedRules, ms(r.seedLoad))
		for _, p := range r.noopPhases {
			fmt.Printf("  no-op: %s %s\n", p.name, ms(p.d))
		}
		rs = append(rs, r)
	}

	t := table{head: []string{"N VMs", "actions (first apply)", "first apply: median (fastest of 3)", "no-op re-apply", "add 1 VM", "firewall alone (nft -f)", "nft rules (set elements)", "seed rules N×(N−1)", "seed iptables-restore", "seed add 1 VM (2N rules)", "seed one `iptables -I` per rule"}}
	var xs, first, noop, add, fw, seedLoad, seedAdd, rules, seedRules []float64
	for _, r := range rs {
		cli := "not run (minutes)"
		if r.seedCLI > 0 {
			cli = ms(r.seedCLI)
		}
		t.add(r.n, r.actions, fmt.Sprintf("%s (%s)", ms(r.first), ms(r.firstMin)), ms(r.noop), ms(r.addOne), ms(r.fwOnly), fmt.Sprintf("%d (%d)", r.rules, r.elements),
			r.seedRules, ms(r.seedLoad), ms(r.seedAdd), cli)
		xs = append(xs, float64(r.n))
		first = append(first, msf(r.first))
		noop = append(noop, msf(r.noop))
		add = append(add, msf(r.addOne))
		fw = append(fw, msf(r.fwOnly))
		seedLoad = append(seedLoad, msf(r.seedLoad))
		seedAdd = append(seedAdd, msf(r.seedAdd))
		rules = append(rules, float64(r.rules))
		seedRules = append(seedRules, float64(r.seedRules))
	}
	fmt.Println()
	t.print(os.Stdout)
	if *only > 0 {
		fmt.Print("\n" + whereTimeGoes(rs[0]))
		return nil
	}

	if err := lineChart("docs/bench-apply-time.svg", "Host network apply time vs number of VMs", "VMs (N)", "milliseconds (log)", []series{
		{name: "microvm: first apply", color: "#1f77b4", x: xs, y: first},
		{name: "microvm: add 1 VM", color: "#2ca02c", x: xs, y: add},
		{name: "microvm: no-op re-apply", color: "#9467bd", x: xs, y: noop},
		{name: "microvm: nft table alone", color: "#17becf", x: xs, y: fw},
		{name: "seed: iptables-restore", color: "#d62728", dashed: true, x: xs, y: seedLoad},
		{name: "seed: add 1 VM", color: "#ff7f0e", dashed: true, x: xs, y: seedAdd},
	}); err != nil {
		return err
	}
	if err := lineChart("docs/bench-apply-rules.svg", "Firewall rules vs number of VMs", "VMs (N)", "rules (log)", []series{
		{name: "microvm: nft rules (sets)", color: "#1f77b4", x: xs, y: rules},
		{name: "seed: FORWARD DROP N×(N−1)", color: "#d62728", dashed: true, x: xs, y: seedRules},
	}); err != nil {
		return err
	}

	var b strings.Builder
	b.WriteString("## Apply at scale\n\n")
	b.WriteString("Command: `go run ./bench apply` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, "Firewall tools: %s, %s.\n\n", strings.TrimSpace(output("nft", "--version")), m.Iptables)
	b.WriteString(`Each figure is the median of 3 runs, each in a fresh sandbox (the one-process-per-rule column: one run). For each N, with 2 s between runs for the kernel to finish tearing down the previous sandbox's links
(a run that overlaps that teardown, or another workload's namespace changes, waits on the kernel's network lock: single
actions then take up to seconds, which is why the fastest of the 3 first applies is shown too): the host part of ` + "`microvm apply`" + ` (plan.Host(in).Apply: storage, N bridges with
their gateway address, N TAPs, forwarding, and the one nftables table) is run in the sandbox's host namespace,
in-process, timed from planning to the last action. "No-op re-apply" is the median of 3 plans that find nothing to do
(one dump each of the links, addresses, routes and rules, /etc/passwd and /etc/group once, the table rendered, and
nftables' generation, which proves the table untouched since apply loaded it: see "where the time goes" below).
"Add 1 VM" applies the same file with VM N+1 added (one bridge, one TAP, and the table's elements and counters for it added in one nftables transaction, which the program sends itself). "Firewall alone" loads only the program's table (` + "`nft -f`" + `, as apply does) into an empty namespace:
that is the part comparable to the seed's rules. The seed's approach is measured in a namespace of its own in the same run:
its ` + "`iptables -I FORWARD -i br-vmA -o br-vmB -j DROP`" + ` for every ordered pair of bridges, loaded at once with
` + "`iptables-restore`" + ` (then "add 1 VM" appends the 2N rules of a new bridge with ` + "`iptables-restore --noflush`" + `), and, up to
N = 64, as the seed's ` + "`extraCommands`" + ` actually do it, one ` + "`iptables -I`" + ` process per rule.

`)
	b.WriteString(t.markdown())
	last := rs[len(rs)-1]
	fmt.Fprintf(&b, "\nAt N = %d the program's table has %d rules (its VMs are %d set elements) against the seed's %d rules (%.0f× more); "+
		"loading the program's whole table takes %s, the seed's rules %s (%.1f×). The program's rule count does not grow with N; "+
		"its first apply grows with N through the links (a bridge, its address and a TAP per VM, through netlink: %.1f ms per VM at N = %d), while its table loads in about the same time at every N.\n\n",
		last.n, last.rules, last.elements, last.seedRules, float64(last.seedRules)/float64(last.rules),
		ms(last.fwOnly), ms(last.seedLoad), float64(last.seedLoad)/float64(last.fwOnly), msf(last.first)/float64(last.n), last.n)
	b.WriteString(whereTimeGoes(last))
	b.WriteString("![apply time vs N](bench-apply-time.svg)\n\n![rules vs N](bench-apply-rules.svg)\n")
	return writeSection("apply", b.String())
}

// whereTimeGoes writes the breakdown of r: each figure beside the seed's
// iptables-restore of the same run, the first apply by action kind, a
// no-op plan by part, adding a VM as planning and applying.
func whereTimeGoes(r applyResult) string {
	var b strings.Builder
	ratio := func(d time.Duration) string { return fmt.Sprintf("%.3f×", float64(d)/float64(r.seedLoad)) }
	fmt.Fprintf(&b, "Against the seed's iptables-restore of the same run (%s at N = %d): the first apply is %s of it (fastest %s), a no-op re-apply %s, adding one VM %s.\n\n",
		ms(r.seedLoad), r.n, ratio(r.first), ratio(r.firstMin), ratio(r.noop), ratio(r.addOne))
	fmt.Fprintf(&b, "### Where the time goes at N = %d\n\n", r.n)
	b.WriteString("The first apply (the fastest of the 3 runs), its planning and its actions by kind:\n\n")
	kinds := table{head: []string{"action", "count", "time", "per action"}}
	var names []string
	for k := range r.byKind {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return r.byKind[names[i]] > r.byKind[names[j]] })
	for _, k := range names {
		kinds.add(strings.TrimPrefix(k, "*"), r.kindCount[k], ms(r.byKind[k]), fmt.Sprintf("%.0f µs", float64(r.byKind[k].Microseconds())/float64(r.kindCount[k])))
	}
	b.WriteString(kinds.markdown())
	b.WriteString("\nA no-op plan, part by part (each the median of the 3 runs; plan.Host does them in this order):\n\n")
	parts := table{head: []string{"part", "time"}}
	for _, p := range r.noopPhases {
		parts.add(p.name, ms(p.d))
	}
	b.WriteString(parts.markdown())
	fmt.Fprintf(&b, "\nAdding one VM: planning %s, applying its actions %s (the firewall's new set elements and two counters sent by the program as one nftables transaction (a netlink batch), and the new VM's bridge, TAP, addresses and routing).\n\n",
		ms(r.addPlan), ms(r.addActions))
	return b.String()
}

// applyReps is how many times each N is measured, each in a fresh
// sandbox; the tables show the median of each figure.
const applyReps = 3

const settleAfterClose = 2 * time.Second

func medianResult(rs []applyResult) applyResult {
	r := rs[0]
	for _, x := range rs {
		if x.first < r.firstMin || r.firstMin == 0 {
			r.firstMin = x.first
		}
	}
	pick := func(f func(*applyResult) *time.Duration) {
		var ds []time.Duration
		for i := range rs {
			ds = append(ds, *f(&rs[i]))
		}
		*f(&r) = median(ds)
	}
	pick(func(a *applyResult) *time.Duration { return &a.first })
	pick(func(a *applyResult) *time.Duration { return &a.noop })
	pick(func(a *applyResult) *time.Duration { return &a.addOne })
	pick(func(a *applyResult) *time.Duration { return &a.fwOnly })
	pick(func(a *applyResult) *time.Duration { return &a.seedLoad })
	pick(func(a *applyResult) *time.Duration { return &a.seedAdd })
	pick(func(a *applyResult) *time.Duration { return &a.addPlan })
	pick(func(a *applyResult) *time.Duration { return &a.addActions })
	// The breakdowns: the first apply's of the fastest run, the no-op's
	// parts each as the median of the runs.
	for _, x := range rs {
		if x.first == r.firstMin {
			r.byKind, r.kindCount = x.byKind, x.kindCount
		}
	}
	r.noopPhases = nil
	for i := range rs[0].noopPhases {
		var ds []time.Duration
		for _, x := range rs {
			ds = append(ds, x.noopPhases[i].d)
		}
		r.noopPhases = append(r.noopPhases, phase{rs[0].noopPhases[i].name, median(ds)})
	}
	return r
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func applyAt(n int, slow bool) (r applyResult, err error) {
	r.n = n
	dir, err := os.MkdirTemp("", "bench-apply-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	in, _, err := parseInfra(dir, infraTOML(n, dir+"/state", dir+"/run", "", false))
	if err != nil {
		return r, err
	}
	more, err := config.Parse(dir+"/infra.toml", []byte(infraTOML(n+1, dir+"/state", dir+"/run", "", false)))
	if err != nil {
		return r, err
	}
	sb, err := sandbox.New(in)
	if err != nil {
		return r, err
	}
	defer sb.Close()
	err = sandbox.Do(sb.Host, func() error {
		// Each measurement starts without the garbage of what ran before
		// it, as a `microvm apply` process does.
		runtime.GC()
		start := time.Now()
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		r.actions = len(p.Actions)
		r.byKind = map[string]time.Duration{"planning (plan.Host)": time.Since(start)}
		r.kindCount = map[string]int{"planning (plan.Host)": 1}
		for _, a := range p.Actions {
			t := time.Now()
			if err := a.Apply(); err != nil {
				return fmt.Errorf("%s: %w", a, err)
			}
			r.byKind[fmt.Sprintf("%T", a)] += time.Since(t)
			r.kindCount[fmt.Sprintf("%T", a)]++
		}
		r.first = time.Since(start)
		var noops []time.Duration
		for range 3 {
			runtime.GC()
			start = time.Now()
			p, err := plan.Host(in)
			if err != nil {
				return err
			}
			if err := p.Apply(io.Discard); err != nil {
				return err
			}
			noops = append(noops, time.Since(start))
			if len(p.Actions) != 0 {
				return fmt.Errorf("re-apply is not a no-op: %d actions, first %s", len(p.Actions), p.Actions[0])
			}
		}
		r.noop = median(noops)
		if r.noopPhases, err = planPhases(in); err != nil {
			return err
		}
		st, err := firewall.Current()
		if err != nil {
			return err
		}
		r.rules, r.elements = st.Rules, st.Elements
		runtime.GC()
		start = time.Now()
		p, err = plan.Host(more)
		if err != nil {
			return err
		}
		r.addPlan = time.Since(start)
		if err := p.Apply(io.Discard); err != nil {
			return err
		}
		r.addOne = time.Since(start)
		r.addActions = r.addOne - r.addPlan
		return nil
	})
	if err != nil {
		return r, err
	}

	// The program's table alone, in an empty namespace (the internet's).
	err = sandbox.Do(sb.Internet, func() error {
		d, err := firewall.Diff(in)
		if err != nil {
			return err
		}
		start := time.Now()
		for _, a := range d.Setup {
			if err := a.Apply(); err != nil {
				return err
			}
		}
		r.fwOnly = time.Since(start)
		return nil
	})
	if err != nil {
		return r, err
	}

	// The design's rules in a namespace of their own.
	seed, err := sandbox.New(in)
	if err != nil {
		return r, err
	}
	defer seed.Close()
	err = sandbox.Do(seed.Host, func() error {
		start := time.Now()
		if err := iptablesRestore(seedRules(in.VMs), false); err != nil {
			return err
		}
		r.seedLoad = time.Since(start)
		save, err := exec.Command("iptables-save", "-t", "filter").Output()
		if err != nil {
			return err
		}
		r.seedRules = countLines(save, "-A FORWARD ")
		start = time.Now()
		if err := iptablesRestore(seedAddRules(in.VMs, more.VMs[n]), true); err != nil {
			return err
		}
		r.seedAdd = time.Since(start)
		return nil
	})
	if err != nil {
		return r, err
	}
	if slow && n <= 64 {
		// As the design's extraCommands do it: one process per rule.
		err = sandbox.Do(seed.Internet, func() error {
			start := time.Now()
			for _, a := range in.VMs {
				for _, b := range in.VMs {
					if a.Name != b.Name {
						if out, err := exec.Command("iptables", "-I", "FORWARD", "-i", a.Bridge, "-o", b.Bridge, "-j", "DROP").CombinedOutput(); err != nil {
							return fmt.Errorf("iptables -I: %s: %w", out, err)
						}
					}
				}
			}
			r.seedCLI = time.Since(start)
			return nil
		})
	}
	return r, err
}

// seedRules is the design's isolation: a FORWARD DROP rule for every ordered
// pair of VM bridges, as iptables-restore input.
func seedRules(vms []config.VM) string {
	var b strings.Builder
	b.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n")
	for _, a := range vms {
		for _, c := range vms {
			if a.Name != c.Name {
				fmt.Fprintf(&b, "-A FORWARD -i %s -o %s -j DROP\n", a.Bridge, c.Bridge)
			}
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// seedAddRules is what the design adds for one more VM: 2N rules.
func seedAddRules(vms []config.VM, add config.VM) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, a := range vms {
		fmt.Fprintf(&b, "-A FORWARD -i %s -o %s -j DROP\n", a.Bridge, add.Bridge)
		fmt.Fprintf(&b, "-A FORWARD -i %s -o %s -j DROP\n", add.Bridge, a.Bridge)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func iptablesRestore(rules string, noflush bool) error {
	args := []string{}
	if noflush {
		args = append(args, "--noflush")
	}
	cmd := exec.Command("iptables-restore", args...)
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %s: %w", strings.TrimSpace(string(out)), err)
	}
	return nil
}
