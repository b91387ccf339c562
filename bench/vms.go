package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// benchState is where the VM benchmarks keep their state: copies of the
// images (made once per recipe version) and the VMs' etc and var. It is not
// the tests' directory, so a test suite running beside a benchmark is not
// disturbed.
const benchState = "/var/cache/microvm-bench/state"

// ensureImage makes sure benchState holds the image name as its recipe
// makes it now: a copy of the tests' (internal/image/imagetest) if that is
// current, else a build (a few minutes, with debootstrap).
func ensureImage(name string) error {
	bench := config.Host{StateDir: benchState, RunDir: filepath.Join(benchState, "run")}
	if m, err := image.ReadMeta(bench, name); err == nil && m.Current(name) {
		if _, err := os.Stat(bench.ImageVmlinux(name)); err == nil {
			return nil
		}
	}
	if _, err := os.Stat(bench.ImageDir(name)); err == nil {
		fmt.Printf("removing the bench's image %s, made by an older recipe\n", name)
		if err := image.Remove(bench, name, nil); err != nil {
			return err
		}
	}
	dir := os.Getenv("MICROVM_TEST_STATE")
	if dir == "" {
		dir = "/var/cache/microvm-test/state"
	}
	tests := config.Host{StateDir: dir}
	if m, err := image.ReadMeta(tests, name); err == nil && m.Current(name) {
		src := tests.ImageDir(name)
		fmt.Printf("copying the image %s to %s (once)\n", src, bench.ImageDir(name))
		os.MkdirAll(bench.ImagesDir(), 0o755)
		if out, err := exec.Command("cp", "-a", src, bench.ImageDir(name)).CombinedOutput(); err != nil {
			return fmt.Errorf("copying the image: %s %w", out, err)
		}
		return nil
	}
	fmt.Printf("building the image %s in %s (once per recipe version; minutes)\n", name, benchState)
	return image.Build(context.Background(), bench, name, prefixed{"  "}, image.Options{Mirror: os.Getenv("MICROVM_TEST_MIRROR"), Boot: image.BootFiles})
}

// prefixed writes to stdout with a prefix before each line.
type prefixed struct{ p string }

func (w prefixed) Write(b []byte) (int, error) {
	s := strings.TrimRight(string(b), "\n")
	fmt.Println(w.p + strings.ReplaceAll(s, "\n", "\n"+w.p))
	return len(b), nil
}

// benchAccel is the accelerator the VMs run with: $MICROVM_BENCH_ACCEL if
// set, else kvm when qemu.CheckKVM boots the kernel of image img with it.
func benchAccel(img string) string {
	if a := os.Getenv("MICROVM_BENCH_ACCEL"); a != "" {
		return a
	}
	bench := config.Host{StateDir: benchState}
	if err := qemu.CheckKVM(bench.ImageVmlinux(img)); err != nil {
		return "tcg"
	}
	return "kvm"
}

// vmWorld is n of the design's VMs, QEMU, in a sandbox with the host part
// applied, each VM from fresh state.
type vmWorld struct {
	in    *config.Infra
	file  string
	bin   string
	sb    *sandbox.Sandbox
	accel string
	tmp   string
	m     machine
	image string
	pool  string // the ZFS pool to destroy at the end, if any
}

// setupVMs builds the world of n VMs booting img, with the storage
// backend named ("dir" or "zfs"). With "zfs", the VMs' state and the
// image live in a pool of their own (zfsPool), made here and destroyed by
// close.
func setupVMs(backend string, n int, img string) (w *vmWorld, err error) {
	w = &vmWorld{image: img}
	w.tmp, err = os.MkdirTemp("", "bench-vms-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	build := exec.Command("go", "build", "-o", w.tmp+"/", "./cmd/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return w, fmt.Errorf("building: %s %w (run from the repository's root)", out, err)
	}
	w.bin = filepath.Join(w.tmp, "microvm")
	if err := ensureImage(img); err != nil {
		return w, err
	}

	w.accel = benchAccel(img)
	w.m = readMachine(w.accel)
	id := make([]byte, 3)
	rand.Read(id)
	run := "/run/mvb-" + hex.EncodeToString(id)
	withImage := func(text string) string {
		return strings.Replace(text, "[defaults]\n", "[defaults]\nimage = \""+img+"\"\n", 1)
	}
	text := withImage(infraTOML(n, benchState, run, w.accel, true))
	if backend == "zfs" {
		if err := newPool(); err != nil {
			return w, err
		}
		w.pool = zfsPool
		text = strings.Replace(withImage(infraTOML(n, zfsState, run, w.accel, true)), "[host]\n",
			"[host]\nstorage = \"zfs\"\nzfs_dataset = \""+zfsPool+"/microvms\"\n", 1)
	}
	w.in, w.file, err = parseInfra(w.tmp, text)
	if err != nil {
		return w, err
	}
	for _, vm := range w.in.VMs {
		if err := storage.RemoveState(vm.StateDir); err != nil {
			return w, err
		}
	}
	w.sb, err = sandbox.New(w.in)
	if err != nil {
		return w, err
	}
	err = sandbox.Do(w.sb.Host, func() error {
		p, err := plan.Host(w.in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	})
	if err == nil && backend == "zfs" {
		err = importImage(w.in.Host, filepath.Join(benchState, "images", img), img, w.tmp)
	}
	return w, err
}

func (w *vmWorld) close() {
	if w.sb != nil {
		w.sb.Close()
	}
	if w.in != nil {
		exec.Command("umount", w.in.Host.ImageView(w.image)).Run()
		os.RemoveAll(w.in.Host.RunDir)
	}
	if w.pool != "" {
		if err := zfstest.Destroy(w.pool); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Remove(zfsPoolFile)
	}
	os.RemoveAll(w.tmp)
}

var (
	initStarted = regexp.MustCompile(`\[\s*(\d+\.\d+)\] microvm-init: started`)
	switchRoot  = regexp.MustCompile(`\[\s*(\d+\.\d+)\] microvm-init: switching root`)
	vmmStarted  = regexp.MustCompile(`started \(pid \d+\)`)
	guestReady  = regexp.MustCompile(`ready: sshd answers`)
	ansi        = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)
)

// watch polls file every 20 ms and records when re first matches in it,
// and the matched groups, until stop is closed.
func watch(file string, re *regexp.Regexp, stop <-chan struct{}, t0 time.Time, out *time.Duration, match *[]string, mu *sync.Mutex) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(file)
		b = ansi.ReplaceAll(b, nil)
		if m := re.FindSubmatch(b); m != nil {
			mu.Lock()
			*out = time.Since(t0)
			if match != nil {
				for _, s := range m {
					*match = append(*match, string(s))
				}
			}
			mu.Unlock()
			return
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// phases is one VM's boot: wall time from the start of its run, as the
// host saw it, and the guest's own clock (seconds since its kernel
// started), read in the guest after the boot.
type phases struct {
	vm, run string
	// Wall: the supervisor's "qemu started", microvm-init's first line,
	// its switch root, systemd starting sshd (from the guest clock, see
	// derive), the supervisor seeing sshd answer, and an SSH login.
	vmm, initStart, switchRoot, sshd, ready, ssh time.Duration
	// Guest clock: microvm-init's first line, its switch root, sshd
	// active (systemd's ActiveEnterTimestampMonotonic of ssh.service), the
	// first accepted SSH login (sshd's journal).
	gInit, gSwitch, gSSHD, gLogin float64
	kernelT, userT                float64       // systemd-analyze: until systemd started, and its userspace until the default target
	analyze                       string        // systemd-analyze's first line
	chain                         string        // systemd-analyze critical-chain ssh.service
	cpu, vmmCPU                   time.Duration // CPU time of all the VM's processes, and of QEMU, at the SSH login
	shutdown                      time.Duration
}

// derive fills in the wall time of what is seen only on the guest clock:
// the guest's clock runs with the host's (under TCG the guest's TSC is
// the host's), so a guest interval after microvm-init's first line is the
// same interval of wall time.
func (p *phases) derive() {
	if p.initStart > 0 && p.gInit > 0 && p.gSSHD > 0 {
		p.sshd = p.initStart + time.Duration((p.gSSHD-p.gInit)*float64(time.Second))
	}
}

func stamp(m []string) float64 {
	var f float64
	if len(m) > 1 {
		fmt.Sscanf(m[1], "%g", &f)
	}
	return f
}

func watchBoot(vm config.VM, supLog, console string, t0 time.Time, stop <-chan struct{}) (*phases, *sync.WaitGroup) {
	p := &phases{vm: vm.Name}
	var mu sync.Mutex
	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	if supLog != "" {
		run(func() { watch(supLog, vmmStarted, stop, t0, &p.vmm, nil, &mu) })
		run(func() { watch(supLog, guestReady, stop, t0, &p.ready, nil, &mu) })
	}
	run(func() {
		var m []string
		watch(console, initStarted, stop, t0, &p.initStart, &m, &mu)
		p.gInit = stamp(m)
	})
	run(func() {
		var m []string
		watch(console, switchRoot, stop, t0, &p.switchRoot, &m, &mu)
		p.gSwitch = stamp(m)
	})
	return p, &wg
}

// guestScript reads the guest's own account of its boot, once it is over.
const guestScript = `timeout 600 systemctl is-system-running --wait >/dev/null 2>&1
systemd-analyze | head -1
echo "sshd $(systemctl show -p ActiveEnterTimestampMonotonic --value ssh.service)"
journalctl -b -u ssh.service -o short-monotonic --no-pager | grep -m1 'Accepted publickey'
echo '--- chain'
systemd-analyze critical-chain ssh.service 2>&1 | tail -n +3`

var (
	analyzeLine = regexp.MustCompile(`Startup finished in (.*?) \(kernel\) \+ (.*?) \(userspace\)`)
	sshdLine    = regexp.MustCompile(`(?m)^sshd (\d+)$`)
	loginLine   = regexp.MustCompile(`\[\s*(\d+\.\d+)\] .*Accepted publickey`)
)

// readGuest fills in p's guest-clock phases and systemd-analyze from the
// guest, over SSH.
func readGuest(c *ssh.Client, p *phases) error {
	out, _, err := guest.Run(c, guestScript)
	if err != nil {
		return err
	}
	head, chain, _ := strings.Cut(out, "--- chain\n")
	p.chain = strings.TrimRight(chain, "\n")
	if l, _, _ := strings.Cut(head, "\n"); strings.HasPrefix(l, "Startup finished") {
		p.analyze = strings.TrimSpace(l)
	}
	if m := analyzeLine.FindStringSubmatch(head); m != nil {
		p.kernelT, p.userT = span(m[1]), span(m[2])
	}
	if m := sshdLine.FindStringSubmatch(head); m != nil {
		var us float64
		fmt.Sscanf(m[1], "%g", &us)
		p.gSSHD = us / 1e6
	}
	p.gLogin = stamp(loginLine.FindStringSubmatch(head))
	p.derive()
	return nil
}

// span reads a systemd timespan ("1min 21.924s", "895ms") in seconds.
func span(s string) float64 {
	var total float64
	for _, f := range strings.Fields(s) {
		i := strings.IndexFunc(f, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if i <= 0 {
			continue
		}
		var v float64
		fmt.Sscanf(f[:i], "%g", &v)
		switch f[i:] {
		case "h":
			v *= 3600
		case "min":
			v *= 60
		case "ms":
			v /= 1000
		case "us":
			v /= 1e6
		}
		total += v
	}
	return total
}

// bootMicrovm starts the world's VMs with `microvm run` (sandbox.Boot),
// all at once, and returns their phases (guest clock included), the VMs
// and SSH clients.
func (w *vmWorld) bootMicrovm(run string) ([]*phases, map[string]*sandbox.VM, map[string]*ssh.Client, error) {
	logs := filepath.Join(w.tmp, "logs-"+strings.ReplaceAll(run, " ", "-"))
	os.MkdirAll(logs, 0o755)
	for _, vm := range w.in.VMs {
		os.Remove(vm.ConsoleLog())
	}
	stop := make(chan struct{})
	t0 := time.Now()
	var ps []*phases
	var wgs []*sync.WaitGroup
	byName := map[string]*phases{}
	for _, vm := range w.in.VMs {
		p, wg := watchBoot(vm, filepath.Join(logs, vm.Name+".log"), vm.ConsoleLog(), t0, stop)
		p.run = run
		ps = append(ps, p)
		byName[vm.Name] = p
		wgs = append(wgs, wg)
	}
	var rmu sync.Mutex
	vms, clients, err := w.sb.Boot(w.bin, w.file, logs, 10*time.Minute, func(name string, after time.Duration) {
		rmu.Lock()
		defer rmu.Unlock()
		byName[name].ssh = after
		vm, _ := w.in.VM(name)
		sup, fs, q := vmPids(w.file, *vm)
		byName[name].vmmCPU = cpuTime(q...)
		byName[name].cpu = cpuTime(append(append(sup, fs...), q...)...)
		fmt.Printf("  %s (%s): SSH login %s after start\n", name, run, secs(after))
	})
	time.Sleep(500 * time.Millisecond) // let the watchers see the last lines
	close(stop)
	for _, wg := range wgs {
		wg.Wait()
	}
	if err != nil {
		return ps, vms, clients, err
	}
	var gwg sync.WaitGroup
	for name, c := range clients {
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			if err := readGuest(c, byName[name]); err != nil {
				fmt.Printf("  %s: reading the guest's boot: %v\n", name, err)
			}
		}()
	}
	gwg.Wait()
	return ps, vms, clients, nil
}

func (w *vmWorld) stopMicrovm(ps []*phases, vms map[string]*sandbox.VM, clients map[string]*ssh.Client) {
	var wg sync.WaitGroup
	for _, c := range clients {
		c.Close()
	}
	for i, vm := range w.in.VMs {
		v := vms[vm.Name]
		if v == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if err := v.Stop(90 * time.Second); err != nil {
				fmt.Printf("  stopping %s: %v\n", vm.Name, err)
			}
			if ps != nil {
				ps[i].shutdown = time.Since(start)
			}
		}()
	}
	wg.Wait()
}

// qemuVM is a VM whose QEMU the bench starts itself, from the command line
// the QEMU backend writes, with no supervisor: to run QEMU with settings
// the program does not use (memory: QEMU's default code cache).
type qemuVM struct {
	cmd     *exec.Cmd
	daemons []*virtiofs.Process
	done    chan struct{}
}

// bootQEMU prepares the world's VMs as the supervisor does (their /etc and
// /var seeded, the managed files, the initramfs, the image's read-only
// view) and starts each with b's command line, all at once; it returns
// them with an SSH client for each.
func (w *vmWorld) bootQEMU(b *qemu.Backend) (map[string]*qemuVM, map[string]*ssh.Client, error) {
	h := w.in.Host
	view := &virtiofs.ReadOnlyView{Src: h.ImageRootfs(w.image), Dst: h.ImageView(w.image)}
	if err := view.Apply(); err != nil {
		return nil, nil, err
	}
	daemon, err := virtiofs.Find()
	if err != nil {
		return nil, nil, err
	}
	pub, _, err := guest.AdminKey(h)
	if err != nil {
		return nil, nil, err
	}
	qs := map[string]*qemuVM{}
	for i := range w.in.VMs {
		vm := &w.in.VMs[i]
		spec := vmm.NewSpec(h, vm, w.image)
		if err := os.MkdirAll(vm.RunDir, 0o755); err != nil {
			return qs, nil, err
		}
		if err := guest.Seed(vm, h.ImageRootfs(w.image)); err != nil {
			return qs, nil, err
		}
		if err := guest.WriteManaged(vm, guest.Keys{Admin: pub}); err != nil {
			return qs, nil, err
		}
		if _, err := kernel.UpdateInitramfs(h.ImageRootfs(w.image), filepath.Join(w.tmp, "microvm-init"), spec.Initramfs); err != nil {
			return qs, nil, err
		}
		q := &qemuVM{done: make(chan struct{})}
		qs[vm.Name] = q
		for _, sh := range spec.Shares {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			d, err := virtiofs.Start(ctx, daemon, sh, nil)
			cancel()
			if err != nil {
				return qs, nil, err
			}
			q.daemons = append(q.daemons, d)
		}
		c, err := b.Command(spec)
		if err != nil {
			return qs, nil, err
		}
		q.cmd = sandbox.Command(w.sb.Host, c.Path, c.Args[1:]...)
		q.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := q.cmd.Start(); err != nil {
			return qs, nil, err
		}
		go func() { q.cmd.Wait(); close(q.done) }()
	}
	clients := map[string]*ssh.Client{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for i := range w.in.VMs {
		vm := &w.in.VMs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := w.sb.Dial(ctx, vm)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
				return
			}
			clients[vm.Name] = c
		}()
	}
	wg.Wait()
	return qs, clients, errors.Join(errs...)
}

// stopQEMU powers the guests off (QEMU exits with them) and stops the
// daemons.
func stopQEMU(qs map[string]*qemuVM, clients map[string]*ssh.Client) {
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); guest.Run(c, "systemctl poweroff --no-block"); c.Close() }()
	}
	wg.Wait()
	for _, q := range qs {
		if q.cmd != nil && q.cmd.Process != nil {
			select {
			case <-q.done:
			case <-time.After(90 * time.Second):
				q.cmd.Process.Kill()
				<-q.done
			}
		}
		for _, d := range q.daemons {
			d.Stop(5 * time.Second)
		}
	}
}
