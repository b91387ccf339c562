package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// runBoot boots the seed's 4 VMs together with `microvm run` (first start,
// from fresh VM state), then the same 4 with a bare QEMU command line, then
// with `microvm run` again (a restart), and splits each boot into phases.
func runBoot(args []string) error {
	w, err := setupVMs("dir")
	if err != nil {
		return err
	}
	defer w.close()
	fmt.Printf("boot: 4 VMs, qemu, accel %s; load average at start %s\n", w.accel, w.m.Load)

	var all []*phases
	loads := map[string]string{}
	fmt.Println("microvm run, first start (fresh /etc and /var):")
	loads["microvm, first start"] = loadavg()
	ps, vms, clients, err := w.bootMicrovm("microvm, first start")
	w.stopMicrovm(ps, vms, clients)
	if err != nil {
		return err
	}
	all = append(all, ps...)

	fmt.Println("bare QEMU command line (same kernel, initramfs, virtiofs daemons):")
	loads["bare QEMU"] = loadavg()
	bp, bares, bclients, err := w.bootBare()
	stopBare(bares, bclients)
	if err != nil {
		return err
	}
	all = append(all, bp...)

	fmt.Println("microvm run, restart (existing /etc and /var):")
	loads["microvm, restart"] = loadavg()
	ps2, vms2, clients2, err := w.bootMicrovm("microvm, restart")
	w.stopMicrovm(ps2, vms2, clients2)
	if err != nil {
		return err
	}
	all = append(all, ps2...)

	t := table{head: []string{"run (load average at its start)", "VM", "VMM started", "kernel's first console line", "init: switch root (guest clock)", "systemd starts sshd", "SSH answers", "CPU time until SSH answers: QEMU / all its processes", "clean stop"}}
	opt := func(d time.Duration) string {
		if d == 0 {
			return "—"
		}
		return secs(d)
	}
	var bars []bar
	for _, p := range all {
		stopT := "—"
		if p.shutdown > 0 {
			stopT = secs(p.shutdown)
		}
		t.add(fmt.Sprintf("%s (%s)", p.run, loads[p.run]), p.vm, opt(p.vmm), opt(p.kernel), fmt.Sprintf("%s (%s)", opt(p.switchRoot), p.guestSwitch), opt(p.sshd), opt(p.ssh), fmt.Sprintf("%s / %s", secs(p.vmmCPU), secs(p.cpu)), stopT)
		bars = append(bars, bar{label: short(p.run) + " " + p.vm, segs: segments(p)})
	}
	fmt.Println()
	t.print(os.Stdout)

	mean := func(ps []*phases) time.Duration {
		var s time.Duration
		for _, p := range ps {
			s += p.ssh
		}
		return s / time.Duration(len(ps))
	}
	maxOf := func(ps []*phases) time.Duration {
		var m time.Duration
		for _, p := range ps {
			m = max(m, p.ssh)
		}
		return m
	}
	meanCPU := func(ps []*phases) time.Duration {
		var s time.Duration
		for _, p := range ps {
			s += p.cpu
		}
		return s / time.Duration(len(ps))
	}
	cold, bare, warm := mean(ps), mean(bp), mean(ps2)
	cpuCold, cpuBare, cpuWarm := meanCPU(ps), meanCPU(bp), meanCPU(ps2)
	summary := fmt.Sprintf("Start to SSH answering, mean of the 4 VMs (last VM): microvm first start %s (%s), bare QEMU %s (%s), microvm restart %s (%s). "+
		"Ratio microvm / bare QEMU: %.2f× on a restart, %.2f× on a first start (which also seeds each VM's /etc and /var from the image).",
		secs(cold), secs(maxOf(ps)), secs(bare), secs(maxOf(bp)), secs(warm), secs(maxOf(ps2)),
		warm.Seconds()/bare.Seconds(), cold.Seconds()/bare.Seconds())
	summary += fmt.Sprintf(" CPU time used by each VM's host processes (QEMU, virtiofsd and, for microvm, the supervisor) until SSH answered, mean: "+
		"microvm first start %s, bare QEMU %s, microvm restart %s; ratio microvm / bare %.2f× on a restart, %.2f× on a first start. "+
		"Under emulation CPU time is the work each boot costs, and should depend much less than wall time on what else runs on the machine (waiting for a core costs no CPU time).",
		secs(cpuCold), secs(cpuBare), secs(cpuWarm), cpuWarm.Seconds()/cpuBare.Seconds(), cpuCold.Seconds()/cpuBare.Seconds())
	fmt.Println("\n" + summary)

	names := []string{"start → VMM up", "→ kernel's first line", "→ init switches root", "→ systemd starts sshd", "→ SSH answers"}
	colors := []string{"#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728"}
	if err := stackedBars("docs/bench-boot.svg", fmt.Sprintf("Boot of 4 VMs started together (QEMU, accel %s), seconds", w.accel), "seconds since the start of the boot", names, colors, bars); err != nil {
		return err
	}

	var b strings.Builder
	b.WriteString("## Boot\n\n")
	b.WriteString("Command: `go run ./bench boot` (as root, from the repository's root; `make bench` runs all five).\n\n")
	b.WriteString(w.m.markdown())
	fmt.Fprintf(&b, "QEMU: %s; guests: 1 vCPU, 512 MiB, the Debian 12 test image (cloud kernel, systemd, OpenSSH).\n", w.m.QEMU)
	if w.accel == "tcg" {
		b.WriteString("\n**Accelerator: TCG (emulation).** KVM does not run guests on this machine, so every figure here is " +
			"emulated CPU time, many times slower than on a host with KVM; the seed's < 5 s target is for KVM and cannot be judged from these numbers. " +
			"What carries over is the ratio between the program and the bare baseline, and where the time goes.\n")
	}
	b.WriteString(`
The 4 VMs of the seed are started together in a sandbox, as after a host reboot, three times in one run:
"microvm, first start" is ` + "`microvm run vmN`" + ` for each (sandbox.Boot: supervisor, three virtiofsd, QEMU as the VMM user)
from fresh VM state, so it includes seeding each VM's /etc and /var from the image; "bare QEMU" is the baseline: the
same kernel, initramfs, kernel command line and virtiofs daemons, with QEMU started from a command line written by
hand (no supervisor, no checks, no QMP; ` + "`bench/vms.go: bareArgs`" + `); "microvm, restart" is ` + "`microvm run`" + ` again on the
now-existing state. Phases are wall-clock times since the start of the run, seen by polling the logs every 20 ms:
"VMM started" is the supervisor's "qemu started (pid N)" line (for the baseline, when QEMU was spawned), the kernel's first
console line, microvm-init's "switching root" line (its own stamp, the guest's clock since boot, in parentheses),
systemd's "Starting ssh.service" on the console (its "Started" line is not always printed before the login prompt), and an SSH login with the admin key succeeding from the host namespace.
The three runs follow one another, so other work starting or ending between them skews the ratios: each run's load
average at its start is beside its name. "Clean stop" is ` + "`systemctl stop`" + `'s path: SIGTERM to the supervisor until it has exited after the guest's shutdown.

`)
	b.WriteString(t.markdown())
	b.WriteString("\n" + summary + "\n\n![boot phases](bench-boot.svg)\n")
	return writeSection("boot", b.String())
}

// loadavg is the 1-, 5- and 15-minute load averages now.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func short(run string) string {
	switch {
	case strings.HasPrefix(run, "bare"):
		return "bare"
	case strings.Contains(run, "first"):
		return "first"
	default:
		return "restart"
	}
}

// segments turns a VM's phases into consecutive lengths, in seconds; a
// phase not seen gets no length.
func segments(p *phases) []float64 {
	marks := []time.Duration{p.vmm, p.kernel, p.switchRoot, p.sshd, p.ssh}
	var out []float64
	prev := time.Duration(0)
	for _, m := range marks {
		if m == 0 || m < prev {
			out = append(out, 0)
			continue
		}
		out = append(out, (m - prev).Seconds())
		prev = m
	}
	return out
}
