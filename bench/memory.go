package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// procMem is the memory of one or more host processes, in KiB.
type procMem struct {
	n             int
	rss, pss      int64
	shmem, ownPSS int64 // RssShmem (guest RAM, a memfd) and Pss_Anon + Pss_File
}

func (p *procMem) add(pid string) {
	p.n++
	p.rss += kbField(filepath.Join("/proc", pid, "status"), "VmRSS:")
	rollup := filepath.Join("/proc", pid, "smaps_rollup")
	p.pss += kbField(rollup, "Pss:")
	p.shmem += kbField(filepath.Join("/proc", pid, "status"), "RssShmem:")
	p.ownPSS += kbField(rollup, "Pss_Anon:") + kbField(rollup, "Pss_File:")
}

func (p procMem) String() string {
	if p.n == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f / %.1f", float64(p.rss)/1024, float64(p.pss)/1024)
}

func kbField(file, key string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), key) {
			f := strings.Fields(strings.TrimPrefix(sc.Text(), key))
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// vmPids finds a VM's host processes by their command lines: the
// supervisor (`microvm run -f FILE NAME`), its virtiofsd daemons (sockets in
// the VM's run directory) and QEMU (its console socket there too).
func vmPids(file string, vm config.VM) (sup, fs, vmmP []string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := e.Name()
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		cmd := strings.Join(args, " ")
		base := filepath.Base(args[0])
		switch {
		case base == "microvm" && len(args) >= 5 && args[1] == "run" && args[len(args)-1] == vm.Name && strings.Contains(cmd, file):
			sup = append(sup, pid)
		case strings.Contains(base, "virtiofsd") && strings.Contains(cmd, vm.RunDir+"/"):
			fs = append(fs, pid)
		case strings.HasPrefix(base, "qemu-system") && strings.Contains(cmd, vm.RunDir+"/"):
			vmmP = append(vmmP, pid)
		}
	}
	return
}

func vmProcs(file string, vm config.VM) (sup, fs, vmmP procMem) {
	s, f, q := vmPids(file, vm)
	for _, p := range s {
		sup.add(p)
	}
	for _, p := range f {
		fs.add(p)
	}
	for _, p := range q {
		vmmP.add(p)
	}
	return
}

// cpuTime is the user + system CPU time the processes have used so far.
func cpuTime(pids ...string) time.Duration {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseInt(f[11], 10, 64) // utime, field 14
				k, _ := strconv.ParseInt(f[12], 10, 64) // stime, field 15
				ticks += u + k
			}
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// codeCache is the resident size of QEMU's translated-code cache, in KiB:
// under TCG, its one anonymous mapping that is readable, writable and
// executable.
func codeCache(pid string) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "smaps"))
	if err != nil {
		return 0
	}
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if f := strings.Fields(l); len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = f[1] == "rwxp" && len(f) == 5
			continue
		}
		if in && strings.HasPrefix(l, "Rss:") {
			var kb int64
			fmt.Sscanf(strings.TrimPrefix(l, "Rss:"), "%d", &kb)
			return kb
		}
	}
	return 0
}

// workload is the same work in every guest, after the boot: reading and
// hashing files, a loop in perl, listing a tree. It runs code the boot did
// not, which fills QEMU's translated-code cache further.
const workload = `for i in 1 2 3; do find /usr/lib -type f 2>/dev/null | head -3000 | xargs md5sum >/dev/null; ` +
	`perl -e 'my $s=0; for my $i (1..300000) { $s+=$i*$i } print $s' >/dev/null; ls -lR /usr/share >/dev/null; done`

// qemuMem is QEMU's memory in one VM, in MiB, at one moment.
type qemuMem struct{ pss, guestRAM, cache float64 }

func readQEMU(file string, vm config.VM) qemuMem {
	_, _, q := vmPids(file, vm)
	var p procMem
	var cache int64
	for _, pid := range q {
		p.add(pid)
		cache += codeCache(pid)
	}
	return qemuMem{float64(p.pss) / 1024, float64(p.shmem) / 1024, float64(cache) / 1024}
}

// memRun is one configuration of the memory benchmark.
type memRun struct {
	name, image string
	tb          int  // -accel tcg,tb-size (MiB); 0 for QEMU's default
	program     bool // booted by microvm run, not by the bench
	baseline    bool // by the program as it was (baselineRev)
	load        string
	booted      []qemuMem // per VM, after the boot had settled
	worked      []qemuMem // and after the workload
	cpuWork     []time.Duration
}

// runMemory boots the design's 4 VMs three times: today's, the stock image
// with the program as it was (baselineRev); the lean image with the
// program as it is but QEMU's default code cache (QEMU started by the
// bench from the backend's command line without tb-size); and the lean
// image with `microvm run`, as the program runs it now. For each it
// measures QEMU after the boot and after the same workload in every
// guest; for the last, every process of each VM and the guest's own use.
func runMemory(args []string) error {
	runs := []*memRun{
		{name: "today: stock image, program " + baselineRev[:7], image: stockImage, program: true, baseline: true},
		{name: "lean image, QEMU's default code cache", image: leanImage},
		{name: fmt.Sprintf("lean image, tb-size=%d (microvm run)", qemu.TBSizeMiB), image: leanImage, tb: qemu.TBSizeMiB, program: true},
	}
	baseline, err := buildRev(baselineRev)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(filepath.Dir(baseline)))
	const settle = 20 * time.Second
	var m machine
	var host, gt table
	var sumPSS, sumOwn, sumGuestRAM float64
	for _, r := range runs {
		w, err := setupRun(4, r.image, r.baseline, baseline)
		if err != nil {
			return err
		}
		if m.Started.IsZero() {
			m = w.m
		}
		r.load = loadavg()
		fmt.Printf("memory: %s; 4 VMs, accel %s; load average %s\n", r.name, w.accel, r.load)
		var stop func()
		var clients map[string]*ssh.Client
		if r.program {
			var vms map[string]*sandbox.VM
			_, vms, clients, err = w.bootMicrovm(r.name)
			stop = func() { w.stopMicrovm(nil, vms, clients) }
		} else {
			b := qemu.New(config.Accel(w.accel))
			b.TBSizeMiB = r.tb
			var qs map[string]*qemuVM
			qs, clients, err = w.bootQEMU(b)
			stop = func() { stopQEMU(qs, clients) }
		}
		if err != nil {
			stop()
			w.close()
			return fmt.Errorf("%s: %w", r.name, err)
		}
		fmt.Printf("letting the guests settle for %s\n", settle)
		time.Sleep(settle)
		for _, vm := range w.in.VMs {
			r.booted = append(r.booted, readQEMU(w.file, vm))
		}
		if r.program && !r.baseline {
			host, gt, sumPSS, sumOwn, sumGuestRAM = measureVMs(w, clients)
		}
		fmt.Println("the same workload in every guest")
		r.cpuWork = make([]time.Duration, len(w.in.VMs))
		var wg sync.WaitGroup
		for i, vm := range w.in.VMs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, q := vmPids(w.file, vm)
				c0 := cpuTime(q...)
				if _, _, err := guest.Run(clients[vm.Name], workload); err != nil {
					fmt.Printf("  %s: workload: %v\n", vm.Name, err)
				}
				r.cpuWork[i] = cpuTime(q...) - c0
			}()
		}
		wg.Wait()
		for _, vm := range w.in.VMs {
			r.worked = append(r.worked, readQEMU(w.file, vm))
		}
		stop()
		w.close()
	}

	q := table{head: []string{"run (load average at its start)", "VM", "QEMU PSS after boot", "of which guest RAM / code cache", "QEMU PSS after the workload", "of which guest RAM / code cache", "QEMU CPU time for the workload"}}
	for _, r := range runs {
		for i, b := range r.booted {
			a := r.worked[i]
			q.add(fmt.Sprintf("%s (%s)", r.name, r.load), fmt.Sprintf("vm%d", i+1), fmt.Sprintf("%.0f MiB", b.pss), fmt.Sprintf("%.0f / %.0f MiB", b.guestRAM, b.cache),
				fmt.Sprintf("%.0f MiB", a.pss), fmt.Sprintf("%.0f / %.0f MiB", a.guestRAM, a.cache), secs(r.cpuWork[i]))
		}
	}
	fmt.Println("\nQEMU, MiB:")
	q.print(os.Stdout)
	fmt.Println("\nhost side with microvm run, MiB RSS / PSS:")
	host.print(os.Stdout)
	fmt.Println("\nguest side (free -m over SSH):")
	gt.print(os.Stdout)

	mean := func(ms []qemuMem) float64 {
		var s float64
		for _, m := range ms {
			s += m.pss
		}
		return s / float64(len(ms))
	}
	meanCache := func(ms []qemuMem) float64 {
		var s float64
		for _, m := range ms {
			s += m.cache
		}
		return s / float64(len(ms))
	}
	meanCPU := func(ds []time.Duration) float64 {
		var s time.Duration
		for _, d := range ds {
			s += d
		}
		return s.Seconds() / float64(len(ds))
	}
	today, leanDefault, now := runs[0], runs[1], runs[2]
	var sum strings.Builder
	fmt.Fprintf(&sum, "QEMU's PSS per VM, mean of 4, after the boot: today %.0f MiB, the lean image with QEMU's default cache %.0f MiB, with tb-size=%d %.0f MiB: now / today **%.2f×** (the bar: ≤ 0.5×). "+
		"After the workload: %.0f, %.0f and %.0f MiB, now / today %.2f×; the code cache alone after it: %.0f, %.0f and %.0f MiB. "+
		"QEMU's CPU time for the workload on the lean image: %.1f s with the default cache, %.1f s with tb-size=%d (%.2f×; the runs had different loads).\n",
		mean(today.booted), mean(leanDefault.booted), qemu.TBSizeMiB, mean(now.booted), mean(now.booted)/mean(today.booted),
		mean(today.worked), mean(leanDefault.worked), mean(now.worked), mean(now.worked)/mean(today.worked),
		meanCache(today.worked), meanCache(leanDefault.worked), meanCache(now.worked),
		meanCPU(leanDefault.cpuWork), meanCPU(now.cpuWork), qemu.TBSizeMiB, meanCPU(now.cpuWork)/meanCPU(leanDefault.cpuWork))
	fmt.Println("\n" + sum.String())

	var b strings.Builder
	b.WriteString("## Memory\n\n")
	b.WriteString("Command: `go run ./bench memory` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, `
The seed's 4 VMs (512 MiB and 1 vCPU each, QEMU, accel %s), three times, one after the other, each measured %s after
the last one answered SSH and again after the same workload in every guest (`+"`bench/memory.go: workload`"+`: hashing
files, a perl loop, listing a tree: code the boot did not run). **Today**: the stock image (`+"`debian-full`"+`) booted by
the program as it was before the lean boot (commit `+baselineRev[:7]+`, built from git: QEMU's default translated-code
cache, 1 GiB under TCG). Then the lean image (`+"`debian`"+`) with the program as it is, first with QEMU started by the
bench from the backend's own command line without tb-size, then with `+"`microvm run`"+`, whose QEMU gets
`+"`-accel tcg,tb-size=%d`"+`. QEMU's PSS is from /proc/PID/smaps_rollup; "guest RAM" is its `+"`RssShmem`"+` (the guest's
memory is a memfd, shared with the virtiofsd daemons); "code cache" is the resident part of its one anonymous
read-write-execute mapping, the translated-code cache (QEMU has none under KVM). The cache keeps every translation
until it is full, including those of code the guest has since overwritten, so without a limit it grows with the
VM's age towards 1 GiB. The size, %d MiB, was chosen by measurement ([guest.md](guest.md#the-code-cache-under-tcg)):
a lean boot fills it once, a smaller one fills several times and translates the same code again.

`, m.Accel, settle, qemu.TBSizeMiB, qemu.TBSizeMiB)
	b.WriteString(q.markdown())
	b.WriteString("\n" + sum.String())
	b.WriteString(`
With ` + "`microvm run`" + ` (the last run), every process of each VM, found by its command line: ` + "`VmRSS`" + ` from
/proc/PID/status and ` + "`Pss`" + ` from /proc/PID/smaps_rollup (PSS splits pages shared between processes, such as the
guest RAM that QEMU and the virtiofsd daemons both map; RSS counts them in each), measured after the boot settled.
What the processes use for themselves is their ` + "`Pss_Anon + Pss_File`" + `. Guest side: ` + "`free -m`" + ` over SSH.

Host side, MiB (RSS / PSS where there are two figures):

`)
	b.WriteString(host.markdown())
	b.WriteString("\nGuest side (`free -m`):\n\n")
	b.WriteString(gt.markdown())
	fmt.Fprintf(&b, "\nThe 4 VMs cost the host %.0f MiB (PSS) in all, %.0f MiB per VM: %.0f MiB of guest RAM held on the host and %.0f MiB "+
		"of the processes' own memory (supervisor, three virtiofsd, QEMU), per VM.\n",
		sumPSS, sumPSS/4, sumGuestRAM/4, sumOwn/4)
	return writeSection("memory", b.String())
}

// measureVMs reads every process of each VM on the host and free -m in
// each guest.
func measureVMs(w *vmWorld, clients map[string]*ssh.Client) (host, gt table, sumPSS, sumOwn, sumGuestRAM float64) {
	host = table{head: []string{"VM", "supervisor (microvm run)", "virtiofsd (×3, summed)", "QEMU", "all of the VM's processes", "guest RAM resident on the host (QEMU RssShmem)", "processes' own memory (Pss_Anon + Pss_File)"}}
	gt = table{head: []string{"VM", "guest total", "used", "buff/cache", "free", "available"}}
	for _, vm := range w.in.VMs {
		sup, fs, q := vmProcs(w.file, vm)
		out, _, err := guest.Run(clients[vm.Name], "free -m")
		var total, used, free, shared, cache, avail float64
		if err == nil {
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "Mem:") {
					fmt.Sscanf(strings.TrimPrefix(l, "Mem:"), "%g %g %g %g %g %g", &total, &used, &free, &shared, &cache, &avail)
				}
			}
		}
		pss := float64(sup.pss+fs.pss+q.pss) / 1024
		rss := float64(sup.rss+fs.rss+q.rss) / 1024
		own := float64(sup.ownPSS+fs.ownPSS+q.ownPSS) / 1024
		guestRAM := float64(q.shmem) / 1024
		sumPSS += pss
		sumOwn += own
		sumGuestRAM += guestRAM
		host.add(vm.Name, sup, fs, q, fmt.Sprintf("%.1f / %.1f", rss, pss), fmt.Sprintf("%.1f", guestRAM), fmt.Sprintf("%.1f", own))
		gt.add(vm.Name, fmt.Sprintf("%.0f MiB", total), fmt.Sprintf("%.0f MiB", used), fmt.Sprintf("%.0f MiB", cache), fmt.Sprintf("%.0f MiB", free), fmt.Sprintf("%.0f MiB", avail))
	}
	return
}
