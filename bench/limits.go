package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// fillRAM makes the guest touch every page of its memory: perl takes 1 MiB
// after another until the guest's OOM killer stops it. QEMU keeps the
// pages (the guest's memory is a memfd it never gives back), which is
// what a VM that has run for a while holds: its page cache fills the rest.
const fillRAM = `perl -e 'my @a; while (1) { push @a, "a" x (1<<20) }' >/dev/null 2>&1; free -m`

// runLimits measures what one VM's processes take beside its guest's
// memory, in the cgroup they share: the figure its memory limit adds to
// memory (config.MemoryOverheadMiB). One VM at a time, 512 MiB then 1024
// MiB of guest memory, its supervisor started in a cgroup of the bench's
// own without a limit, read after the boot, after the guest touched all
// its memory, and after the memory bench's workload.
func runLimits(args []string) error {
	var t table
	t.head = []string{"guest memory", "when", "cgroup now", "of which guest memory", "page cache (reclaimable)", "the rest (anonymous, kernel)", "cgroup peak", "QEMU RSS / PSS", "QEMU's code cache", "3 virtiofsd RSS / PSS", "supervisor RSS / PSS"}
	var m machine
	var accel string
	var overheads []string
	for _, mem := range []int{512, 1024} {
		w, err := setupVMs("dir", 1, leanImage)
		if err != nil {
			return err
		}
		m, accel = w.m, w.accel
		text, _ := os.ReadFile(w.file)
		w.in, w.file, err = parseInfra(w.tmp, strings.Replace(string(text), "memory = 512", fmt.Sprintf("memory = %d", mem), 1))
		if err != nil {
			w.close()
			return err
		}
		rows, rest, err := measureLimits(w, mem)
		w.close()
		if err != nil {
			return err
		}
		for _, r := range rows {
			t.add(r...)
		}
		overheads = append(overheads, fmt.Sprintf("%d MiB beside %d MiB", rest>>20, mem))
	}
	fmt.Println()
	t.print(os.Stdout)
	var b strings.Builder
	b.WriteString("## Limits\n\n")
	b.WriteString("Command: `go run ./bench limits` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, `
What a VM's processes take beside its guest's memory, which its cgroup's memory limit adds to `+"`memory`"+`
(`+"`config.MemoryOverheadMiB`"+`). One VM at a time (QEMU, accel %s, 1 vCPU, the lean image), its supervisor
`+"`microvm run`"+` started in a cgroup of the bench's own without a limit, so that the cgroup holds it, its three
virtiofsd daemons and QEMU, as a VM's cgroup does. Read once the guest answered SSH and settled, again after the
guest touched every page of its memory (perl took 1 MiB after another until the guest's OOM killer stopped it:
QEMU keeps those pages, as a VM that has run a while holds its whole memory in page cache), and again after the
memory bench's workload (code the boot did not run, which fills QEMU's code cache). "cgroup" is what the kernel
charges the cgroup (memory.usage_in_bytes, or memory.current; the peak is memory.max_usage_in_bytes, or
memory.peak), page cache of the files its processes read included; RSS and PSS of each process are from
/proc/PID/status and smaps_rollup (PSS splits the guest memory QEMU shares with the daemons).

`, accel)
	b.WriteString(t.markdown())
	fmt.Fprintf(&b, "\nThe most the rest took: %s. The limit gives QEMU under TCG %d MiB beside 512 MiB "+
		"(%d MiB and 2%% of memory); under KVM, without the code cache, QEMU and Cloud Hypervisor get %d MiB.\n",
		strings.Join(overheads, ", "), config.MemoryOverheadMiB(config.QEMU, config.TCG, 512),
		config.MemoryOverheadMiB(config.QEMU, config.TCG, 0), config.MemoryOverheadMiB(config.QEMU, config.KVM, 512))
	return writeSection("limits", b.String())
}

// measureLimits boots w's one VM with mem MiB in a cgroup without a
// limit and reads it three times; it returns the table's rows and the
// most the rest (neither guest memory nor page cache) took.
func measureLimits(w *vmWorld, mem int) ([][]any, int64, error) {
	vm := &w.in.VMs[0]
	g, err := cgroup.Create(fmt.Sprintf("microvm-bench-%d", os.Getpid()), config.Limits{MemoryMiB: 1 << 20, Pids: 1 << 16, CPUWeight: 100, IOWeight: 100})
	if err != nil {
		return nil, 0, err
	}
	defer g.End()
	gate, open, err := os.Pipe()
	if err != nil {
		return nil, 0, err
	}
	log, err := os.Create(filepath.Join(w.tmp, "supervisor.log"))
	if err != nil {
		return nil, 0, err
	}
	defer log.Close()
	cmd := sandbox.Command(w.sb.Host, w.bin, "run", "-f", w.file, vm.Name)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{gate}
	cmd.Env = append(os.Environ(), supervise.GateEnv+"=3")
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	gate.Close()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			cmd.Process.Kill()
		}
	}()
	if err := g.Add(cmd.Process.Pid); err != nil {
		return nil, 0, err
	}
	open.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	c, err := w.sb.Dial(ctx, vm)
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("%w\n%s", err, sandbox.Console(vm, 20))
	}
	defer c.Close()
	fmt.Printf("limits: %d MiB guest answers SSH; settling for 20s\n", mem)
	time.Sleep(20 * time.Second)
	var rows [][]any
	var most int64
	read := func(when string) {
		u, err := g.Use()
		if err != nil {
			fmt.Println(err)
		}
		st := memStat(g)
		shmem := st["shmem"]
		cache := st["cache"] + st["file"] - shmem // v1 counts shmem in cache; v2 in file
		rest := u.MemoryBytes - shmem - cache
		most = max(most, rest)
		sup, fs, q := vmProcs(w.file, *vm)
		var code int64
		_, _, qp := vmPids(w.file, *vm)
		for _, pid := range qp {
			code += codeCache(pid)
		}
		rows = append(rows, []any{fmt.Sprintf("%d MiB", mem), when, mib(u.MemoryBytes), mib(shmem), mib(cache), mib(rest), mib(u.MemoryPeak),
			q.String(), fmt.Sprintf("%.0f MiB", float64(code)/1024), fs.String(), sup.String()})
		fmt.Printf("  %s: cgroup %s (guest memory %s, page cache %s, the rest %s), peak %s; QEMU %s; virtiofsd %s; supervisor %s\n",
			when, mib(u.MemoryBytes), mib(shmem), mib(cache), mib(rest), mib(u.MemoryPeak), q, fs, sup)
	}
	read("booted")
	out, _, err := guest.Run(c, fillRAM)
	if err != nil {
		return nil, 0, err
	}
	fmt.Printf("  the guest after filling its memory:\n%s", out)
	read("guest memory all touched")
	if _, _, err := guest.Run(c, workload); err != nil {
		return nil, 0, err
	}
	read("after the workload")
	return rows, most, nil
}

// memStat reads the cgroup's memory.stat: what its charge is made of.
func memStat(g *cgroup.Group) map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open(filepath.Join(g.Dir("memory"), "memory.stat"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		out[k] = n
	}
	return out
}
