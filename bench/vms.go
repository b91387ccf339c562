package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// benchState is where the VM benchmarks keep their state: a copy of the
// test image (made once) and the VMs' etc and var. It is not the tests'
// directory, so a test suite running beside a benchmark is not disturbed.
const benchState = "/var/cache/microvm-bench/state"

// testImage is the image the tests build (internal/image/imagetest).
func testImage() string {
	dir := os.Getenv("MICROVM_TEST_STATE")
	if dir == "" {
		dir = "/var/cache/microvm-test/state"
	}
	return filepath.Join(dir, "images", config.DefaultImage)
}

// vmWorld is the seed's 4 VMs, QEMU, in a sandbox with the host part applied.
type vmWorld struct {
	in    *config.Infra
	file  string
	bin   string
	sb    *sandbox.Sandbox
	accel string
	tmp   string
	m     machine
	pool  string // the ZFS pool to destroy at the end, if any
}

// setupVMs builds the world with the storage backend named ("dir" or
// "zfs"). With "zfs", the VMs' state and the image live in a pool of
// their own (zfsPool), made here and destroyed by close.
func setupVMs(backend string) (w *vmWorld, err error) {
	w = &vmWorld{}
	w.tmp, err = os.MkdirTemp("", "bench-vms-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	fmt.Println("building microvm and microvm-init (CGO_ENABLED=0)")
	build := exec.Command("go", "build", "-o", w.tmp+"/", "./cmd/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return w, fmt.Errorf("building: %s %w (run from the repository's root)", out, err)
	}
	w.bin = filepath.Join(w.tmp, "microvm")

	img := filepath.Join(benchState, "images", config.DefaultImage)
	if _, err := os.Stat(filepath.Join(img, "vmlinux")); err != nil {
		src := testImage()
		if _, err := os.Stat(filepath.Join(src, "vmlinux")); err != nil {
			return w, fmt.Errorf("no image in %s: build the tests' image first (MICROVM_TEST_IMAGE_BUILD=1 go test ./internal/image/)", src)
		}
		fmt.Printf("copying the image %s to %s (once)\n", src, img)
		os.MkdirAll(filepath.Dir(img), 0o755)
		if out, err := exec.Command("cp", "-a", src, img).CombinedOutput(); err != nil {
			return w, fmt.Errorf("copying the image: %s %w", out, err)
		}
	}

	w.accel = "kvm"
	if err := qemu.CheckKVM(); err != nil {
		w.accel = "tcg"
	}
	w.m = readMachine(w.accel)
	id := make([]byte, 3)
	rand.Read(id)
	run := "/run/mvb-" + hex.EncodeToString(id)
	text := infraTOML(4, benchState, run, w.accel, true)
	if backend == "zfs" {
		if err := newPool(); err != nil {
			return w, err
		}
		w.pool = zfsPool
		text = strings.Replace(infraTOML(4, zfsState, run, w.accel, true), "[host]\n",
			"[host]\nstorage = \"zfs\"\nzfs_dataset = \""+zfsPool+"/microvms\"\n", 1)
	}
	w.in, w.file, err = parseInfra(w.tmp, text)
	if err != nil {
		return w, err
	}
	for _, vm := range w.in.VMs {
		if err := os.RemoveAll(vm.StateDir); err != nil {
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
		err = importImage(w.in.Host, img, w.tmp)
	}
	return w, err
}

func (w *vmWorld) close() {
	if w.sb != nil {
		w.sb.Close()
	}
	if w.in != nil {
		exec.Command("umount", w.in.Host.ImageView(config.DefaultImage)).Run()
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

// marker is a console or log line whose first appearance is a boot phase.
type marker struct {
	name string
	re   *regexp.Regexp
}

var (
	anyLine    = regexp.MustCompile(`\S`)
	switchRoot = regexp.MustCompile(`\[\s*(\d+\.\d+)\] microvm-init: switching root`)
	sshStarted = regexp.MustCompile(`Start(ing|ed) ssh\.serv`)
	vmmStarted = regexp.MustCompile(`started \(pid \d+\)`)
	ansi       = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)
)

// watch polls file every 20 ms and records when re first matches in it,
// until stop is closed.
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

// phases is one VM's boot, in wall time from the start of the boot.
type phases struct {
	vm, run                            string
	vmm, kernel, switchRoot, sshd, ssh time.Duration
	guestSwitch                        string        // the guest's clock at switch root
	cpu, vmmCPU                        time.Duration // CPU time of all the VM's processes, and of QEMU, when SSH answered
	shutdown                           time.Duration
}

func watchBoot(vm config.VM, supLog, console string, t0 time.Time, stop <-chan struct{}) (*phases, *sync.Mutex, *sync.WaitGroup) {
	p := &phases{vm: vm.Name}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var sw []string
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	if supLog != "" {
		run(func() { watch(supLog, vmmStarted, stop, t0, &p.vmm, nil, &mu) })
	}
	run(func() { watch(console, anyLine, stop, t0, &p.kernel, nil, &mu) })
	run(func() {
		watch(console, switchRoot, stop, t0, &p.switchRoot, &sw, &mu)
		mu.Lock()
		if len(sw) > 1 {
			p.guestSwitch = sw[1] + " s"
		}
		mu.Unlock()
	})
	run(func() { watch(console, sshStarted, stop, t0, &p.sshd, nil, &mu) })
	return p, &mu, &wg
}

// bootMicrovm starts the 4 VMs with `microvm run` (sandbox.Boot) and
// returns their phases, the VMs and SSH clients.
func (w *vmWorld) bootMicrovm(run string) ([]*phases, map[string]*sandbox.VM, map[string]*ssh.Client, error) {
	logs := filepath.Join(w.tmp, "logs-"+run)
	os.MkdirAll(logs, 0o755)
	for _, vm := range w.in.VMs {
		os.Remove(vm.ConsoleLog())
	}
	stop := make(chan struct{})
	t0 := time.Now()
	var ps []*phases
	var wgs []*sync.WaitGroup
	byName := map[string]*phases{}
	var mus []*sync.Mutex
	for _, vm := range w.in.VMs {
		p, mu, wg := watchBoot(vm, filepath.Join(logs, vm.Name+".log"), vm.ConsoleLog(), t0, stop)
		p.run = run
		ps = append(ps, p)
		byName[vm.Name] = p
		wgs = append(wgs, wg)
		mus = append(mus, mu)
	}
	var rmu sync.Mutex
	vms, clients, err := w.sb.Boot(w.bin, w.file, logs, 10*time.Minute, func(name string, after time.Duration) {
		rmu.Lock()
		byName[name].ssh = after
		vm, _ := w.in.VM(name)
		sup, fs, q := vmPids(w.file, *vm)
		byName[name].vmmCPU = cpuTime(q...)
		byName[name].cpu = cpuTime(append(append(sup, fs...), q...)...)
		rmu.Unlock()
		fmt.Printf("  %s (%s): SSH answers %s after start\n", name, run, secs(after))
	})
	time.Sleep(500 * time.Millisecond) // let the watchers see the last lines
	close(stop)
	for _, wg := range wgs {
		wg.Wait()
	}
	return ps, vms, clients, err
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

// bareVM is the baseline: the same kernel, initramfs and virtiofs daemons,
// with QEMU started from a command line written by hand, no supervisor.
type bareVM struct {
	qemu    *exec.Cmd
	daemons []*virtiofs.Process
	done    chan struct{}
}

// bareArgs is the hand-written QEMU command line of the baseline: the
// minimum that boots the image (microvm machine, shared memory for
// virtiofs, the three shares, the TAP, a serial console to a file).
func bareArgs(accel string, vm *config.VM, kernel, initrd, console string, shares []virtiofs.Share) []string {
	cpu, timers, extra := "host", "pit=off,pic=off", ""
	if accel == "tcg" {
		cpu, timers = "max", "pit=on,pic=on"
		if k := qemu.HostTSCkHz(); k > 0 {
			extra = fmt.Sprintf("tsc_early_khz=%d", k) // as the backend does: no TSC calibration
		}
	}
	mem := fmt.Sprintf("%dM", vm.MemoryMiB)
	args := []string{
		"-M", "microvm,x-option-roms=off," + timers + ",rtc=on,isa-serial=on,acpi=on,pcie=off,usb=off,memory-backend=mem",
		"-accel", accel, "-cpu", cpu, "-smp", fmt.Sprint(vm.VCPU), "-m", mem,
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-global", "virtio-mmio.force-legacy=false",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", strings.TrimSpace(vmm.Cmdline(vm) + " " + extra),
		"-serial", "file:" + console,
		"-device", "virtio-rng-device",
	}
	for i, sh := range shares {
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=fs%d,path=%s", i, sh.Socket),
			"-device", fmt.Sprintf("vhost-user-fs-device,chardev=fs%d,tag=%s,queue-size=1024", i, sh.Tag))
	}
	return append(args,
		"-netdev", fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no", vm.TAP),
		"-device", fmt.Sprintf("virtio-net-device,netdev=net0,mac=%s", vm.MAC))
}

func (w *vmWorld) bootBare() ([]*phases, []*bareVM, map[string]*ssh.Client, error) {
	h := w.in.Host
	view := &virtiofs.ReadOnlyView{Src: h.ImageRootfs(config.DefaultImage), Dst: h.ImageView(config.DefaultImage)}
	if err := view.Apply(); err != nil {
		return nil, nil, nil, err
	}
	daemon, err := virtiofs.Find()
	if err != nil {
		return nil, nil, nil, err
	}
	stop := make(chan struct{})
	t0 := time.Now()
	var ps []*phases
	var wgs []*sync.WaitGroup
	var bares []*bareVM
	var errs []error
	clients := map[string]*ssh.Client{}
	var cmu sync.Mutex
	var dial sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for i := range w.in.VMs {
		vm := &w.in.VMs[i]
		console := filepath.Join(vm.RunDir, "bare-console.log")
		os.Remove(console)
		p, _, wg := watchBoot(*vm, "", console, t0, stop)
		p.run = "bare QEMU"
		ps = append(ps, p)
		wgs = append(wgs, wg)
		spec := vmm.NewSpec(h, vm)
		b := &bareVM{done: make(chan struct{})}
		bares = append(bares, b)
		for _, sh := range spec.Shares {
			dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
			d, err := virtiofs.Start(dctx, daemon, sh, nil)
			dcancel()
			if err != nil {
				return ps, bares, clients, err
			}
			b.daemons = append(b.daemons, d)
		}
		b.qemu = sandbox.Command(w.sb.Host, "qemu-system-x86_64", bareArgs(w.accel, vm, spec.Kernel, spec.Initramfs, console, spec.Shares)...)
		b.qemu.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var qout bytes.Buffer
		b.qemu.Stdout, b.qemu.Stderr = &qout, &qout
		if err := b.qemu.Start(); err != nil {
			return ps, bares, clients, err
		}
		p.vmm = time.Since(t0)
		go func() { b.qemu.Wait(); close(b.done) }()
		vctx, vcancel := context.WithCancel(ctx)
		go func() {
			select { // a QEMU that exits ends the wait for its SSH
			case <-b.done:
				vcancel()
			case <-vctx.Done():
			}
		}()
		dial.Add(1)
		go func() {
			defer dial.Done()
			defer vcancel()
			c, err := w.sb.Dial(vctx, vm)
			cmu.Lock()
			defer cmu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w (qemu: %s)", vm.Name, err, qout.String()))
				return
			}
			p.ssh = time.Since(t0)
			// By command line, as for microvm: the C virtiofsd forks, and
			// its child does the work.
			_, fs, q := vmPids(w.file, *vm)
			p.vmmCPU = cpuTime(q...)
			p.cpu = cpuTime(append(fs, q...)...)
			clients[vm.Name] = c
			fmt.Printf("  %s (bare QEMU): SSH answers %s after start\n", vm.Name, secs(p.ssh))
		}()
	}
	dial.Wait()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	for _, wg := range wgs {
		wg.Wait()
	}
	if len(errs) > 0 {
		return ps, bares, clients, errs[0]
	}
	return ps, bares, clients, nil
}

func stopBare(bares []*bareVM, clients map[string]*ssh.Client) {
	// The guests power off; QEMU exits (-no-reboot).
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); guest.Run(c, "systemctl poweroff --no-block"); c.Close() }()
	}
	wg.Wait()
	for _, b := range bares {
		if b.qemu != nil && b.qemu.Process != nil {
			select {
			case <-b.done:
			case <-time.After(90 * time.Second):
				b.qemu.Process.Kill()
				<-b.done
			}
		}
		for _, d := range b.daemons {
			d.Stop(5 * time.Second)
		}
	}
}
