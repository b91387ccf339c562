// Command bench runs the project's benchmarks (tier 4 of DESIGN.md). Each
// benchmark is one subcommand; each builds its own sandbox of network
// namespaces (package sandbox), never touches the machine's own network,
// prints a table, and rewrites its own section of docs/benchmarks.md (and
// its plot, docs/bench-*.svg) with the figures and the machine it ran on.
//
//	go run ./bench apply     # host network apply at N = 4, 16, 64, 250 VMs vs the design's iptables rules
//	go run ./bench apply -cpuprofile apply.prof   # the same, with a CPU profile for go tool pprof
//	go run ./bench packet    # throughput and latency VM -> internet, program's ruleset vs the design's rules
//	go run ./bench boot      # the stock and the lean image: 4 real microVMs started together, and one alone, phase by phase
//	go run ./bench disk      # image size, each VM's own use after boot, total vs the design's < 10 GB
//	go run ./bench memory    # QEMU's memory per VM before and after (image, code cache), every process of a VM, the guest's own use
//	go run ./bench limits    # what a VM's processes take beside its guest's memory, in their cgroup (the memory limit's overhead)
//	go run ./bench flush     # what nft flush ruleset lets through between VMs and to the host, with and without policy routing
//	go run ./bench metrics   # a scrape of the metrics endpoint with 4 and 250 VMs: time, allocations, size
//	go run ./bench fleet     # a push to 3 hosts × 250 VMs until all applied it, vs one host's apply; a move's downtime vs a restart
//
// Run it as root from the repository's root (it writes docs/ there).
package main

import (
	"fmt"
	"os"
	"sort"
)

type benchmark struct {
	about string
	run   func(args []string) error
}

var benchmarks = map[string]benchmark{
	"apply":   {"host network apply at N = 4, 16, 64, 250 VMs, beside the seed's iptables rules", runApply},
	"packet":  {"throughput and latency from a VM stand-in to the internet, program's ruleset vs the seed's rules", runPacket},
	"boot":    {"the stock and the lean image, 4 real microVMs together and one alone: boot phases, CPU time, systemd-analyze", runBoot},
	"disk":    {"image size, each VM's own disk use after boot, total for the 4-VM setup", runDisk},
	"memory":  {"QEMU's memory per VM before and after the lean image and its code cache size; every process of a VM; the guest's own use", runMemory},
	"limits":  {"what a VM's processes take beside its guest's memory, in their cgroup: the memory limit's overhead", runLimits},
	"flush":   {"what nft flush ruleset lets through between VMs and to the host before the watcher closes the ports, with and without policy routing", runFlush},
	"fleet":   {"a push to 3 hosts × 250 VMs until every host applied it, vs one host's apply; a move's downtime vs a restart", runFleet},
	"metrics": {"a scrape of the metrics endpoint with 4 and 250 VMs (stand-ins), stopped and running: time, allocations, size", runMetrics},
}

func main() {
	if len(os.Args) < 2 || benchmarks[os.Args[1]].run == nil {
		fmt.Fprintln(os.Stderr, "usage: go run ./bench BENCHMARK  (as root, from the repository's root)")
		var names []string
		for n := range benchmarks {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(os.Stderr, "  %-7s %s\n", n, benchmarks[n].about)
		}
		os.Exit(2)
	}
	if err := benchmarks[os.Args[1]].run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
