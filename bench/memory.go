package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
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

// runMemory boots the seed's 4 VMs and measures memory on both sides.
func runMemory(args []string) error {
	w, err := setupVMs("dir")
	if err != nil {
		return err
	}
	defer w.close()
	fmt.Printf("memory: 4 VMs, accel %s; load average at start %s\n", w.accel, w.m.Load)
	_, vms, clients, err := w.bootMicrovm("microvm")
	defer func() { w.stopMicrovm(nil, vms, clients) }()
	if err != nil {
		return err
	}
	const settle = 20 * time.Second
	fmt.Printf("letting the guests settle for %s\n", settle)
	time.Sleep(settle)

	host := table{head: []string{"VM", "supervisor (microvm run)", "virtiofsd (×3, summed)", "QEMU", "all of the VM's processes", "guest RAM resident on the host (QEMU RssShmem)", "processes' own memory (Pss_Anon + Pss_File)"}}
	gt := table{head: []string{"VM", "guest total", "used", "buff/cache", "free", "available"}}
	var sumPSS, sumOwn, sumGuestRAM float64
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
	fmt.Println("\nhost side, MiB RSS / PSS:")
	host.print(os.Stdout)
	fmt.Println("\nguest side (free -m over SSH):")
	gt.print(os.Stdout)

	var b strings.Builder
	b.WriteString("## Memory\n\n")
	b.WriteString("Command: `go run ./bench memory` (as root, from the repository's root; `make bench` runs all five).\n\n")
	b.WriteString(w.m.markdown())
	fmt.Fprintf(&b, `
The seed's 4 VMs (512 MiB and 1 vCPU each, QEMU, accel %s) booted together with `+"`microvm run`"+`, measured %s after
the last one answered SSH. Host side: every process of each VM found by its command line, `+"`VmRSS`"+` from
/proc/PID/status and `+"`Pss`"+` from /proc/PID/smaps_rollup (PSS splits pages shared between processes, such as the
guest RAM that QEMU and the virtiofsd daemons both map, the memfd needed by vhost-user; RSS counts them in each).
Guest side: `+"`free -m`"+` over SSH. The guest's RAM is a memfd (shared memory, which vhost-user needs), so the
part of it the host holds shows as QEMU's `+"`RssShmem`"+`, counted once; what the processes use for themselves is
their `+"`Pss_Anon + Pss_File`"+` (under TCG, QEMU's own memory is mostly its translated-code cache: a 1 GiB anonymous rwx mapping, `+"`-accel tcg,tb-size`"+`, of which about 550 MiB was resident in a QEMU checked with /proc/PID/smaps; QEMU has no such cache under KVM, which this machine cannot run, so the VMM's own share on a KVM host is not measured here).

Host side, MiB (RSS / PSS where there are two figures):

`, w.accel, settle)
	b.WriteString(host.markdown())
	b.WriteString("\nGuest side (`free -m`):\n\n")
	b.WriteString(gt.markdown())
	fmt.Fprintf(&b, "\nThe 4 VMs cost the host %.0f MiB (PSS) in all, %.0f MiB per VM: %.0f MiB of guest RAM held on the host and %.0f MiB "+
		"of the processes' own memory (supervisor, three virtiofsd, QEMU), per VM.\n",
		sumPSS, sumPSS/4, sumGuestRAM/4, sumOwn/4)
	return writeSection("memory", b.String())
}
