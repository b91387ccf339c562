package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

// The images boot compares: the lean default and the image as it was.
const (
	leanImage  = config.DefaultImage
	stockImage = "debian-full"
)

// baselineRev is the program as it was before the lean boot (issue 15):
// the "today" runs boot the stock image with it, built from git.
const baselineRev = "7e08237623990c56c09110aa12610c41a37522ec"

// bootRun is one boot of the benchmark: n VMs of one image started
// together, by the current program or by the baseline's.
type bootRun struct {
	name, image string
	n           int
	baseline    bool
	load        string // load average at its start
	ps          []*phases
}

// runBoot boots the design's 4 VMs together: the stock image with the
// program as it was (baselineRev), the stock image and the lean one with
// the program as it is; then one VM of each alone; all with `microvm run`
// from fresh VM state and the same kernel. It splits each boot into
// phases, on the host's clock and on the guest's.
func runBoot(args []string) error {
	runs := []*bootRun{
		{name: "today ×4", image: stockImage, n: 4, baseline: true},
		{name: "stock ×4", image: stockImage, n: 4},
		{name: "lean ×4", image: leanImage, n: 4},
		{name: "lean alone", image: leanImage, n: 1},
		{name: "stock alone", image: stockImage, n: 1},
		{name: "today alone", image: stockImage, n: 1, baseline: true},
	}
	baseline, err := buildRev(baselineRev)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(filepath.Dir(baseline)))
	var m machine
	var slow slowdown
	for _, r := range runs {
		w, err := setupRun(r.n, r.image, r.baseline, baseline)
		if err != nil {
			return err
		}
		if m.Started.IsZero() {
			m = w.m
		}
		r.load = loadavg()
		fmt.Printf("boot: %s (image %s, qemu, accel %s); load average %s\n", r.name, r.image, w.accel, r.load)
		ps, vms, clients, err := w.bootMicrovm(r.name)
		r.ps = ps
		if err == nil && r.name == "lean alone" {
			slow, err = measureSlowdown(clients["vm1"])
		}
		w.stopMicrovm(ps, vms, clients)
		w.close()
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
	}
	kernels, err := sameKernel()
	if err != nil {
		return err
	}

	opt := func(d time.Duration) string {
		if d <= 0 {
			return "—"
		}
		return secs(d)
	}
	g := func(f float64) string {
		if f <= 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f s", f)
	}
	wall := table{head: []string{"run (load average at its start)", "VM", "VMM up", "kernel done: init starts", "init switches root", "sshd started †", "sshd answers (supervisor)", "SSH login", "CPU time until SSH login: QEMU / all its processes", "clean stop"}}
	gt := table{head: []string{"run", "VM", "init starts", "init switches root", "systemd starts (systemd-analyze: kernel)", "sshd started (ssh.service active)", "first SSH login accepted", "systemd: userspace until default target"}}
	var bars []bar
	for _, r := range runs {
		for _, p := range r.ps {
			wall.add(fmt.Sprintf("%s (%s)", r.name, r.load), p.vm, opt(p.vmm), opt(p.initStart), opt(p.switchRoot), opt(p.sshd), opt(p.ready), opt(p.ssh),
				fmt.Sprintf("%s / %s", secs(p.vmmCPU), secs(p.cpu)), opt(p.shutdown))
			gt.add(r.name, p.vm, g(p.gInit), g(p.gSwitch), g(p.kernelT), g(p.gSSHD), g(p.gLogin), g(p.userT))
			bars = append(bars, bar{label: r.name + " " + p.vm, segs: segments(p)})
		}
	}
	fmt.Println()
	wall.print(os.Stdout)
	fmt.Println()
	gt.print(os.Stdout)

	today4, stock4, lean4, leanAlone, stockAlone, todayAlone := runs[0].ps, runs[1].ps, runs[2].ps, runs[3].ps, runs[4].ps, runs[5].ps
	cpu := func(p *phases) float64 { return p.cpu.Seconds() }
	user := func(p *phases) float64 { return p.userT }
	login := func(p *phases) float64 { return p.ssh.Seconds() }
	bar25 := func(r float64) string {
		if r <= 0.25 {
			return "meets the bar, ≤ 0.25×"
		}
		return "**misses the bar, ≤ 0.25×**"
	}
	var sum strings.Builder
	line := func(what string, f func(*phases) float64, bar bool) {
		l4, s4, t4 := meanOf(lean4, f), meanOf(stock4, f), meanOf(today4, f)
		la, sa, ta := meanOf(leanAlone, f), meanOf(stockAlone, f), meanOf(todayAlone, f)
		fmt.Fprintf(&sum, "- %s: 4 together, lean %s, stock %s, today %s: lean / today **%.2f×**", what, secsF(l4), secsF(s4), secsF(t4), l4/t4)
		if bar {
			fmt.Fprintf(&sum, " (%s)", bar25(l4/t4))
		}
		fmt.Fprintf(&sum, ", lean / stock **%.2f×**; alone, lean %s, stock %s, today %s: lean / today **%.2f×**, lean / stock **%.2f×**.\n",
			l4/s4, secsF(la), secsF(sa), secsF(ta), la/ta, la/sa)
	}
	fmt.Fprintf(&sum, "Mean per VM, in this run; lean / today compares the program and image as they are with both as they were, lean / stock the images alone:\n\n")
	line("CPU time until SSH login (all of a VM's host processes)", cpu, true)
	line("Guest userspace until the default target (systemd-analyze)", user, true)
	line("Start to SSH login (wall)", login, false)
	fmt.Println("\n" + sum.String())

	kvm := predictKVM(leanAlone[0], slow)
	fmt.Println(kvm)

	names := []string{"start → VMM up", "→ kernel done", "→ init switches root", "→ systemd starts sshd", "→ sshd answers", "→ SSH login"}
	colors := []string{"#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728"}
	if err := stackedBars("docs/bench-boot.svg", fmt.Sprintf("Boot, stock and lean image (QEMU, accel %s), seconds", m.Accel), "seconds since the start of the boot", names, colors, bars); err != nil {
		return err
	}

	var b strings.Builder
	b.WriteString("## Boot\n\n")
	b.WriteString("Command: `go run ./bench boot` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, "QEMU: %s; guests: 1 vCPU, 512 MiB; kernel %s in both images.\n", m.QEMU, kernels)
	if m.Accel == "tcg" {
		b.WriteString("\n**Accelerator: TCG (emulation).** KVM does not run guests on this machine, so every figure here is " +
			"emulated, many times slower than on a host with KVM; the seed's < 5 s target is for KVM (see the prediction below). " +
			"What carries over is the ratio between the images, and where the time goes.\n")
	}
	b.WriteString(`
Two images made by their recipes (` + "`microvm image build`" + `, [guest.md](guest.md)): **stock** is ` + "`debian-full`" + `, the
image as it was before the lean recipe (udev, D-Bus, logind, every Debian unit and timer); **lean** is ` + "`debian`" + `, the
default. Both have the same kernel. **today** is the stock image booted by the program as it was before the lean
boot (commit ` + baselineRev[:7] + `, built from git by the benchmark: no ` + "`quiet`" + `, virtiofs ` + "`cache=auto`" + `, QEMU's default code
cache); **stock** and **lean** are booted by the program as it is. So lean / today is what the lean boot changed
in all, lean / stock what the image alone changed. Six runs, one after the other, each from fresh VM state with
` + "`microvm run`" + ` (sandbox.Boot: supervisor, three virtiofsd, QEMU as the VMM user): the seed's 4 VMs together, as after
a host reboot, with each of today, stock and lean, then one VM of each alone. The load average at each run's start
is beside its name: the machine is shared, and a load above the 2 cores means other work competed for them.
Today's program prints no "started" line and has no readiness probe, so two of its phases are missing.

Wall-clock phases, from the start of the run, seen by polling the logs every 20 ms: the supervisor's "qemu started"
line; microvm-init's first console line (the kernel is done: with ` + "`quiet`" + ` on the command line the kernel prints
nothing before it); its "switching root" line; systemd starting sshd (†: ssh.service's activation time on the guest's
clock, placed on the wall clock from microvm-init's first line: the guest's clock is the host's TSC, so it runs at
wall-clock speed); the supervisor's readiness probe seeing sshd's banner; an SSH login with the admin key
succeeding from the host. CPU time is user + system of the VM's processes (/proc/PID/stat) at the login: under
emulation it is the work a boot costs, and it depends much less than wall time on what else runs on the machine.
"Clean stop" is ` + "`systemctl stop`" + `'s path: SIGTERM to the supervisor until it has exited after the guest's shutdown.

`)
	b.WriteString(wall.markdown())
	b.WriteString(`
The same boots on the guest's clock (seconds since its kernel started), read inside each guest once its boot was over:
microvm-init's stamps on the console, ` + "`systemd-analyze`" + ` (its "kernel" is everything before systemd: the kernel and
microvm-init), ssh.service's ` + "`ActiveEnterTimestampMonotonic`" + ` and sshd's first "Accepted publickey" in the journal.

`)
	b.WriteString(gt.markdown())
	b.WriteString("\n" + sum.String())
	b.WriteString("\n`systemd-analyze` in the first VM of each run:\n\n```\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "%-12s %s\n", r.name+":", r.ps[0].analyze)
	}
	b.WriteString("```\n")
	for _, r := range runs[1:3] {
		fmt.Fprintf(&b, "\n`systemd-analyze critical-chain ssh.service`, %s, vm1:\n\n```\n%s\n```\n", r.name, r.ps[0].chain)
	}
	b.WriteString("\n" + kvm + "\n\n![boot phases](bench-boot.svg)\n")
	return writeSection("boot", b.String())
}

// setupRun is setupVMs for n VMs of img; for a run of today's (baseline),
// the VMs then run with the program at bin, which applies the host part
// again first: a supervisor refuses a host whose network is not the one
// its own plan makes.
func setupRun(n int, img string, baseline bool, bin string) (*vmWorld, error) {
	w, err := setupVMs("dir", n, img)
	if err != nil || !baseline {
		return w, err
	}
	w.bin = bin
	if out, err := sandbox.Command(w.sb.Host, bin, "apply", "--host-only", "-f", w.file).CombinedOutput(); err != nil {
		w.close()
		return nil, fmt.Errorf("baseline apply --host-only: %s %w", out, err)
	}
	return w, nil
}

// buildRev builds microvm and microvm-init as they were at revision rev
// of this repository (git archive, then go build) and returns the path of
// microvm.
func buildRev(rev string) (string, error) {
	fmt.Printf("building the baseline program (%s) from git\n", rev[:7])
	tmp, err := os.MkdirTemp("", "bench-baseline-")
	if err != nil {
		return "", err
	}
	src, bin := filepath.Join(tmp, "src"), filepath.Join(tmp, "bin")
	os.MkdirAll(src, 0o755)
	archive := exec.Command("sh", "-c", "git archive --format=tar "+rev+" | tar -x -C "+src)
	if out, err := archive.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("git archive %s (the benchmark needs the repository's history): %s %w", rev, out, err)
	}
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("building %s: %s %w", rev, out, err)
	}
	return filepath.Join(bin, "microvm"), nil
}

func meanOf(ps []*phases, f func(*phases) float64) float64 {
	var s float64
	for _, p := range ps {
		s += f(p)
	}
	return s / float64(len(ps))
}

func secsF(f float64) string { return fmt.Sprintf("%.1f s", f) }

// sameKernel returns the kernel version of both images, or an error if
// they differ: the comparison is of the images, on one kernel.
func sameKernel() (string, error) {
	h := config.Host{StateDir: benchState}
	var versions []string
	for _, img := range []string{stockImage, leanImage} {
		k, err := kernel.Find(h.ImageRootfs(img))
		if err != nil {
			return "", err
		}
		versions = append(versions, k.Version)
	}
	if versions[0] != versions[1] {
		return "", fmt.Errorf("the images have different kernels (%s: %s, %s: %s); rebuild the older one", stockImage, versions[0], leanImage, versions[1])
	}
	return versions[0], nil
}

// slowdown is how many times slower the guest ran the same work than
// the host: a loop starting a program (what a boot is made of: fork,
// exec, page faults, the dynamic loader) and a loop of shell arithmetic
// (plain user-space computation).
type slowdown struct {
	execGuest, execHost, cpuGuest, cpuHost time.Duration
}

func (s slowdown) exec() float64 { return s.execGuest.Seconds() / s.execHost.Seconds() }
func (s slowdown) cpu() float64  { return s.cpuGuest.Seconds() / s.cpuHost.Seconds() }

// The loops, timed by the shell that runs them (dash, in the guest and on
// the host), in nanoseconds.
const (
	execLoop = `s=$(date +%s%N); i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo $(($(date +%s%N)-s))`
	cpuLoop  = `s=$(date +%s%N); i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $(($(date +%s%N)-s))`
)

// measureSlowdown runs the loops in the guest behind c and on the host.
func measureSlowdown(c *ssh.Client) (slowdown, error) {
	var s slowdown
	for _, l := range []struct {
		script      string
		guest, host *time.Duration
	}{{execLoop, &s.execGuest, &s.execHost}, {cpuLoop, &s.cpuGuest, &s.cpuHost}} {
		out, _, err := guest.Run(c, "sh -c '"+l.script+"'")
		if err != nil {
			return s, err
		}
		if *l.guest, err = nanos(out); err != nil {
			return s, fmt.Errorf("guest loop: %w", err)
		}
		hout, err := exec.Command("sh", "-c", l.script).Output()
		if err != nil {
			return s, err
		}
		if *l.host, err = nanos(string(hout)); err != nil {
			return s, fmt.Errorf("host loop: %w", err)
		}
	}
	return s, nil
}

func nanos(s string) (time.Duration, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	return time.Duration(n), err
}

// predictKVM estimates the lean image's time to SSH on a host with KVM from
// one VM booted alone: the host-side start (VMM up, which runs natively
// here too) plus the guest's own time to its first SSH login divided by
// how much slower the guest ran the same work than the host. Under KVM the
// guest runs at about the host's speed; what does not shrink with it is
// the host side of virtiofs, which is part of the guest's time here.
func predictKVM(p *phases, s slowdown) string {
	if p.gLogin <= 0 || s.execHost <= 0 || s.cpuHost <= 0 {
		return "Predicted time to SSH on a KVM host: not measured (a phase or the slowdown is missing)."
	}
	byExec := p.vmm.Seconds() + p.gLogin/s.exec()
	byCPU := p.vmm.Seconds() + p.gLogin/s.cpu()
	return fmt.Sprintf("**Predicted time to SSH on a KVM host, lean image: about %.2f s** (%.2f s if the boot's work slowed down like plain computation). "+
		"Derived from the lean VM booted alone: the guest's own clock put its first SSH login %.2f s after its kernel started "+
		"(kernel %.2f s, init %.2f s, systemd to sshd %.2f s, sshd to the login %.2f s). In the same run the guest ran a loop starting "+
		"200 programs in %s and the host in %s, %.0f× slower; a loop of shell arithmetic took %s against %s, %.0f× slower. "+
		"A boot is mostly starting programs, so the guest's time divided by %.0f, plus the %.2f s before the VMM runs (host work, as fast here "+
		"as on any host), is the estimate. It leaves out what KVM adds (exits to the VMM for virtio and the serial port) and counts the "+
		"host side of virtiofs, which does not speed up, as if it did: take it as the order of magnitude, to be measured on a host with KVM.",
		byExec, byCPU, p.gLogin, p.gInit, p.gSwitch-p.gInit, p.gSSHD-p.gSwitch, p.gLogin-p.gSSHD,
		secs(s.execGuest), ms(s.execHost), s.exec(), secs(s.cpuGuest), ms(s.cpuHost), s.cpu(), s.exec(), p.vmm.Seconds())
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

// segments turns a VM's phases into consecutive lengths, in seconds; a
// phase not seen gets no length.
func segments(p *phases) []float64 {
	marks := []time.Duration{p.vmm, p.initStart, p.switchRoot, p.sshd, p.ready, p.ssh}
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
