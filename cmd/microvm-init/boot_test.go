package main

// The boot test: microvm-init as the /init of a real initramfs (Debian's
// cloud kernel and its modules, from package kernel), booted by the
// project's QEMU backend with its three virtiofs shares served by the
// project's virtiofs package, into a tiny image whose /sbin/init
// (testdata/guestinit) reports what it finds. test/fetch-kernel.sh
// downloads the kernel:
//
//	export MICROVM_TEST_KERNEL_ROOT="$(test/fetch-kernel.sh)"
//	go test ./cmd/microvm-init/    # as root

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// Under TCG a boot takes seconds. bootTimeout is how long one may take,
// with a margin for a machine busy with other tests; a guest whose console
// stays silent for stallAfter is taken as stalled.
const (
	bootTimeout = 3 * time.Minute
	stallAfter  = 30 * time.Second
)

// TestBoot boots a VM three times: as the host would, with microvm.ip
// missing from the kernel command line, and without the var share.
func TestBoot(t *testing.T) {
	e := newBootEnv(t)

	// The whole boot sequence: the modules, the three shares, the network,
	// the hostname, and the switch into the image's init, which sees a
	// read-only / (even after remounting it read-write), its own /etc and
	// /var (which reach the host), and the kernel's filesystems.
	t.Run("ok", func(t *testing.T) {
		r := e.boot(t, nil)
		if r.timedOut {
			t.Fatalf("the guest did not power off (QEMU killed after %v, or %v without console output); console:\n%s", bootTimeout, stallAfter, r.console)
		}
		wantInit := []string{
			"started",
			fmt.Sprintf("modules loaded (%d)", len(e.modules)),
			"shares mounted",
			"eth0 10.1.0.2/24 via 10.1.0.1",
			fmt.Sprintf("eth0 %s/64 via %s", e.vm.Addr6, e.vm.Gateway6),
			"hostname vm1",
			"wrote /etc/resolv.conf (nameserver 1.1.1.1)",
			"switching root to /sbin/init",
			"freed the initramfs (",
		}
		got := initLines(r.console)
		if len(got) != len(wantInit) {
			t.Errorf("microvm-init printed %d lines, want %d:\n%s", len(got), len(wantInit), strings.Join(got, "\n"))
		}
		for i, want := range wantInit {
			if i >= len(got) || !strings.HasPrefix(got[i], want) {
				t.Errorf("microvm-init line %d is not %q", i+1, want)
			}
		}

		guest := guestLines(r.console)
		for _, c := range []struct{ key, want string }{
			{"pid", "1"},
			{"hostname", "vm1"},
			{"eth0", "10.1.0.2/24 up"},
			{"default-route", "via 10.1.0.1 dev eth0"},
			// The link-local address from its MAC, which the firewall
			// knows, and no other address of its own making.
			{"eth0-ipv6", fmt.Sprintf("%s/64,%s/64", e.vm.Addr6, e.vm.LinkLocal6)},
			{"default-route-ipv6", fmt.Sprintf("via %s dev eth0", e.vm.Gateway6)},
			{"ipv6-accept_ra", "0"},
			{"ipv6-autoconf", "0"},
			{"mount:/", "virtiofs image ro"},
			{"mount:/etc", "virtiofs etc rw"},
			{"mount:/var", "virtiofs var rw"},
			{"mount:/dev", "devtmpfs devtmpfs rw"},
			{"mount:/proc", "proc proc rw"},
			{"mount:/sys", "sysfs sysfs rw"},
			{"init-file", "ENOENT"},
			{"write:/", "EROFS"},
			// The guest may remount its root read-write, and the
			// host still refuses every write.
			{"remount-rw:/", "ok"},
			{"mount-after-remount:/", "virtiofs image rw"},
			{"write-after-remount:/", "EROFS"},
			{"mkdir-after-remount:/", "EROFS"},
			{"write:/etc", "ok"},
			{"write:/var", "ok"},
			{"resolv.conf", "nameserver 1.1.1.1"},
			{"done", ""},
		} {
			if got, ok := guest[c.key]; !ok || got != c.want {
				t.Errorf("GUEST %s=%q, want %q", c.key, got, c.want)
			}
		}

		// What the guest wrote is on the host, in the VM's directories;
		// nothing reached the image.
		for _, dir := range []string{e.vm.EtcDir, e.vm.VarDir} {
			b, err := os.ReadFile(filepath.Join(dir, "written-by-guest"))
			if err != nil || string(b) != "vm1\n" {
				t.Errorf("on the host, %s/written-by-guest = %q, %v; want \"vm1\\n\"", dir, b, err)
			}
		}
		for _, name := range []string{"written-by-guest", "made-by-guest"} {
			if _, err := os.Lstat(filepath.Join(e.rootfs, name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the image has %s (%v): the guest wrote to it", name, err)
			}
		}
		if t.Failed() {
			t.Logf("console:\n%s", r.console)
		}
	})

	// A command line without microvm.ip: one line says so, and the VM
	// powers off by itself.
	t.Run("missing-ip", func(t *testing.T) {
		r := e.boot(t, func(args []string) []string {
			for i := range args {
				if args[i] == "-append" {
					var words []string
					for _, w := range strings.Fields(args[i+1]) {
						if !strings.HasPrefix(w, "microvm.ip=") {
							words = append(words, w)
						}
					}
					args[i+1] = strings.Join(words, " ")
				}
			}
			return args
		})
		failsWith(t, r, nil, "reading kernel command line: missing microvm.ip")
	})

	// A VMM that does not give the var share: microvm-init waits for it
	// a few seconds, in case the device is still being probed, then says
	// which share is missing and powers off.
	t.Run("missing-share", func(t *testing.T) {
		r := e.boot(t, func(args []string) []string {
			// Drop the -device of the share tagged var and its -chardev.
			var id string
			for i, a := range args {
				if strings.HasPrefix(a, "vhost-user-fs-device,") && strings.Contains(a+",", ",tag=var,") {
					_, rest, _ := strings.Cut(a, "chardev=")
					id, _, _ = strings.Cut(rest, ",")
					args = slices.Delete(args, i-1, i+1)
					break
				}
			}
			for i, a := range args {
				if id != "" && strings.HasPrefix(a, "socket,id="+id+",") {
					return slices.Delete(args, i-1, i+1)
				}
			}
			t.Fatalf("no var share in %q", args)
			return nil
		})
		failsWith(t, r, []string{"modules loaded"},
			"mounting virtiofs var on /mnt/var: invalid argument (no virtiofs device is tagged var)")
	})
}

// failsWith checks that the console has, of microvm-init's lines, only the
// one line want, after the progress lines before (the start of each), and
// that the guest powered off by itself.
func failsWith(t *testing.T, r bootResult, before []string, want string) {
	t.Helper()
	before = append([]string{"started"}, before...)
	if r.timedOut {
		t.Fatalf("the guest did not power off (QEMU killed after %v, or %v without console output); console:\n%s", bootTimeout, stallAfter, r.console)
	}
	var lines []string
	for l := range strings.Lines(r.console) {
		if _, msg, ok := strings.Cut(l, "microvm-init: "); ok {
			lines = append(lines, strings.TrimSpace(msg))
		}
	}
	if len(lines) != len(before)+1 || lines[len(lines)-1] != want {
		t.Errorf("microvm-init printed\n%s\nwant %d progress lines, then\n%s", strings.Join(lines, "\n"), len(before), want)
	}
	for i, b := range before {
		if i >= len(lines) || !strings.HasPrefix(lines[i], b) {
			t.Errorf("microvm-init line %d is not %q", i+1, b)
		}
	}
	if g := guestLines(r.console); len(g) > 0 {
		t.Errorf("the image's init ran: %v", g)
	}
	if t.Failed() {
		t.Logf("console:\n%s", r.console)
	}
}

// bootEnv is a VM ready to boot: the model of a one-VM infra.toml in a
// temporary directory, its image (a rootfs holding testdata/guestinit as
// /sbin/init) behind its read-only view, its kernel and initramfs, and its
// TAP in a network namespace of its own, where the guest's packets go
// nowhere.
type bootEnv struct {
	host    config.Host
	vm      *config.VM
	rootfs  string
	modules []string // the initramfs's modules, in load order
	daemon  virtiofs.Daemon
	netns   string
}

func newBootEnv(t *testing.T) *bootEnv {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "qemu-system-x86_64", "ip") // apt-get install qemu-system-x86 iproute2
	root := os.Getenv("MICROVM_TEST_KERNEL_ROOT")
	if _, err := os.Stat(root); root == "" || err != nil {
		testenv.Unavailable(t, fmt.Sprintf("no real kernel: set MICROVM_TEST_KERNEL_ROOT=$(test/fetch-kernel.sh) (it is %q)", root))
	}
	daemon, err := virtiofs.Find()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}

	dir := t.TempDir()
	in, err := config.Parse("infra.toml", fmt.Appendf(nil, `
[host]
uplink = "eth0"
state_dir = %q
run_dir = %q
user = "microvm"

[vm.vm1]
subnet = "10.1.0.0/24"
hypervisor = "qemu"
vcpu = 1
memory = 256
`, filepath.Join(dir, "state"), filepath.Join(dir, "run")))
	if err != nil {
		t.Fatal(err)
	}
	// The test runs QEMU as root, and the VM's user need not exist: no
	// socket group for the daemons.
	vm, _ := in.VM("vm1")
	vm.User = ""
	e := &bootEnv{host: in.Host, vm: vm, rootfs: in.Host.ImageRootfs(vm.Image), daemon: daemon}
	for _, d := range []string{vm.EtcDir, vm.VarDir, vm.VMMDir(), e.host.ImageDir(vm.Image)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The image: just what microvm-init needs (the mount points) and its
	// /sbin/init.
	for _, d := range []string{"sbin", "etc", "var", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(e.rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	goBuild(t, "./testdata/guestinit", filepath.Join(e.rootfs, "sbin", "init"))

	// Its kernel and initramfs, where the QEMU backend looks for them.
	k, err := kernel.Find(root)
	if err != nil {
		t.Fatal(err)
	}
	bzImage, err := os.ReadFile(k.Image)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, err := kernel.ExtractVmlinux(bzImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.host.ImageVmlinux(vm.Image), vmlinux, 0o644); err != nil {
		t.Fatal(err)
	}
	if e.modules, err = kernel.Modules(k.Modules, kernel.GuestModules...); err != nil {
		t.Fatal(err)
	}
	initPath := filepath.Join(t.TempDir(), "microvm-init")
	goBuild(t, ".", initPath)
	initProgram, err := os.ReadFile(initPath)
	if err != nil {
		t.Fatal(err)
	}
	var initramfs bytes.Buffer
	if err := kernel.WriteInitramfs(&initramfs, initProgram, e.modules); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(e.host.ImageInitramfs(vm.Image)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.host.ImageInitramfs(vm.Image), initramfs.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	// The image share serves the read-only view, as on a real host.
	view := &virtiofs.ReadOnlyView{Src: e.rootfs, Dst: e.host.ImageView(vm.Image)}
	if err := view.Apply(); err != nil {
		t.Fatal(err)
	}
	// Registered after t.TempDir, so it runs before the directory's removal.
	t.Cleanup(func() {
		if err := unix.Unmount(view.Dst, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", view.Dst, err)
		}
	})

	// The TAP the backend opens, in a throwaway namespace: never on the
	// machine's own network.
	e.netns = testenv.NetNS(t)
	tap := []string{"-n", e.netns, "tuntap", "add", "dev", vm.TAP, "mode", "tap"}
	if vm.TAPQueues() > 1 {
		tap = append(tap, "multi_queue")
	}
	if out, err := exec.Command("ip", tap...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(tap, " "), err, out)
	}
	return e
}

// goBuild builds the package pkg as a static binary at out: the initramfs
// and the test image have no libc.
func goBuild(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// bootResult is how a boot went.
type bootResult struct {
	console  string // the serial console log
	timedOut bool   // QEMU was killed, after bootTimeout or stallAfter; otherwise it exited by itself
}

// boot boots the VM with the QEMU backend's command line, its arguments
// changed by edit unless nil, and returns once QEMU has exited. Should the
// guest stall before its init runs (see the QEMU backend on clock
// calibration under TCG), it tries once more.
func (e *bootEnv) boot(t *testing.T, edit func(args []string) []string) bootResult {
	t.Helper()
	for attempt := 1; ; attempt++ {
		r := e.bootOnce(t, edit)
		if !r.timedOut || strings.Contains(r.console, "microvm-init:") || attempt == 2 {
			return r
		}
		t.Logf("attempt %d: the guest stalled before microvm-init ran; retrying; the console ended:\n%s", attempt, tail(r.console, 10))
	}
}

func (e *bootEnv) bootOnce(t *testing.T, edit func([]string) []string) bootResult {
	t.Helper()
	os.Remove(e.vm.ConsoleLog())
	spec := vmm.NewSpec(e.host, e.vm, e.vm.Image)
	// QEMU writes the console into the descriptor it is given (the
	// supervisor gives a pipe it rotates a log from; this test the log).
	consoleFile, err := os.OpenFile(e.vm.ConsoleLog(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer consoleFile.Close()
	spec.Console = consoleFile

	// The daemons exit by themselves when QEMU disconnects; Stop is for a
	// boot that failed before.
	var daemonLog testenv.SyncBuffer
	var daemons []*virtiofs.Process
	defer func() {
		for _, p := range daemons {
			p.Stop(time.Second)
		}
	}()
	for _, sh := range spec.Shares {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := virtiofs.Start(ctx, e.daemon, sh, &daemonLog)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		daemons = append(daemons, p)
	}

	cmd, err := qemu.New("tcg").Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(cmd.Args[1:])
	if edit != nil {
		args = edit(args)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	// ip netns exec execs QEMU in the namespace: the PID stays QEMU's.
	run := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.netns, cmd.Path}, args...)...)
	var qemuOut bytes.Buffer
	run.Stdout, run.Stderr = &qemuOut, &qemuOut
	run.ExtraFiles = cmd.ExtraFiles
	start := time.Now()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	// A booting guest writes to its console every second or so; one that
	// has written nothing for stallAfter has stalled.
	var stalled bool
	lastSize, lastChange := int64(-1), time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			var size int64
			if fi, err := os.Stat(e.vm.ConsoleLog()); err == nil {
				size = fi.Size()
			}
			if size != lastSize {
				lastSize, lastChange = size, time.Now()
			} else if time.Since(lastChange) > stallAfter && !stalled {
				stalled = true
				cancel()
			}
		}
	}
	elapsed := time.Since(start)
	console, _ := os.ReadFile(e.vm.ConsoleLog())
	r := bootResult{console: strings.ReplaceAll(string(console), "\r\n", "\n"), timedOut: ctx.Err() != nil}
	t.Logf("QEMU exited after %v (%v; killed: %t, stalled: %t)", elapsed.Round(time.Millisecond), err, r.timedOut, stalled)
	for _, l := range strings.Split(r.console, "\n") {
		if strings.Contains(l, "microvm-init:") || strings.Contains(l, "Kernel command line:") || strings.Contains(l, "Run /init") || strings.Contains(l, "reboot: Power down") {
			t.Logf("  %s", l)
		}
	}
	if qemuOut.Len() > 0 || r.timedOut {
		t.Logf("QEMU said:\n%s\nvirtiofsd said:\n%s", &qemuOut, &daemonLog)
	}
	return r
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// initLines returns what microvm-init's progress lines say, without their
// time stamps.
func initLines(console string) []string {
	var out []string
	for l := range strings.Lines(console) {
		if _, msg, ok := strings.Cut(l, "] microvm-init: "); ok {
			out = append(out, strings.TrimSpace(msg))
		}
	}
	return out
}

// guestLines returns the guest's GUEST key=value lines as a map.
func guestLines(console string) map[string]string {
	m := map[string]string{}
	s := bufio.NewScanner(strings.NewReader(console))
	for s.Scan() {
		if _, kv, ok := strings.Cut(s.Text(), "GUEST "); ok {
			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
			m[k] = v
		}
	}
	return m
}
