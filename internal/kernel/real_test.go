package kernel

// Tests against Debian's real cloud kernel. test/fetch-kernel.sh downloads
// and unpacks it; MICROVM_TEST_KERNEL_ROOT names the unpacked root:
//
//	export MICROVM_TEST_KERNEL_ROOT="$(test/fetch-kernel.sh)"
//	go test ./internal/kernel/

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// realKernel returns the kernel in MICROVM_TEST_KERNEL_ROOT.
func realKernel(t *testing.T) Kernel {
	t.Helper()
	root := os.Getenv("MICROVM_TEST_KERNEL_ROOT")
	if _, err := os.Stat(root); root == "" || err != nil {
		testenv.Unavailable(t, fmt.Sprintf("no real kernel: set MICROVM_TEST_KERNEL_ROOT=$(test/fetch-kernel.sh) (it is %q)", root))
	}
	k, err := Find(root)
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	return k
}

func realVmlinux(t *testing.T, k Kernel) []byte {
	t.Helper()
	bzImage, err := os.ReadFile(k.Image)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, err := ExtractVmlinux(bzImage)
	if err != nil {
		t.Fatalf("ExtractVmlinux(%s): %v", k.Image, err)
	}
	return vmlinux
}

func TestRealExtractVmlinux(t *testing.T) {
	k := realKernel(t)
	vmlinux := realVmlinux(t, k)
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("vmlinux is for %v, want %v", f.Machine, elf.EM_X86_64)
	}
	pvh, err := HasPVH(vmlinux)
	if err != nil || !pvh {
		t.Errorf("HasPVH = %v, %v; want true (Cloud Hypervisor cannot boot it otherwise)", pvh, err)
	}
}

func TestRealModules(t *testing.T) {
	k := realKernel(t)
	paths, err := Modules(k.Modules, GuestModules...)
	if err != nil {
		t.Fatalf("Modules: %v", err)
	}
	// Read modules.dep again, plainly, to check the order against it.
	dep, err := os.ReadFile(filepath.Join(k.Modules, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	for line := range strings.Lines(string(dep)) {
		path, list, _ := strings.Cut(line, ":")
		deps[filepath.Join(k.Modules, path)] = strings.Fields(list)
	}
	var names []string
	for i, p := range paths {
		names = append(names, moduleName(p))
		if _, err := os.Stat(p); err != nil {
			t.Errorf("module file: %v", err)
		}
		if slices.Contains(paths[:i], p) {
			t.Errorf("%s is listed twice", p)
		}
		for _, d := range deps[p] {
			if !slices.Contains(paths[:i], filepath.Join(k.Modules, d)) {
				t.Errorf("%s comes before its dependency %s", moduleName(p), moduleName(d))
			}
		}
	}
	// What the guest needs is either a file in the list or built in (Debian's
	// cloud kernel builds ext4 in).
	builtin, err := os.ReadFile(filepath.Join(k.Modules, "modules.builtin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{"virtio", "virtio_ring", "fuse"}, GuestModules...) {
		if !slices.Contains(names, want) && !strings.Contains(string(builtin), "/"+want+".ko\n") {
			t.Errorf("modules %v lack %s, and it is not built in", names, want)
		}
	}
}

// TestBootQEMU is the proof that the pieces fit: QEMU boots the extracted
// vmlinux through its PVH entry point (as Cloud Hypervisor does) with an
// initramfs from WriteInitramfs, whose init (testdata/testinit) loads
// every module in load order and finds one network interface on each
// virtio transport, MMIO (QEMU's microvm) and PCI (Cloud Hypervisor).
func TestBootQEMU(t *testing.T) {
	k := realKernel(t)
	testenv.NeedCommands(t, "qemu-system-x86_64") // apt-get install qemu-system-x86
	dir := t.TempDir()
	vmlinux := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(vmlinux, realVmlinux(t, k), 0o644); err != nil {
		t.Fatal(err)
	}
	modules, err := Modules(k.Modules, GuestModules...)
	if err != nil {
		t.Fatalf("Modules: %v", err)
	}
	initramfs := filepath.Join(dir, "initramfs")
	writeTestInitramfs(t, initramfs, modules)

	args := []string{
		// pcie=on gives the microvm machine a PCI host bridge for the
		// second NIC. /dev/kvm does not work on the test machines: TCG.
		"-M", "microvm,pcie=on", "-accel", "tcg", "-m", "256",
		// Guest time from the instruction count: without it a busy host
		// can stall the guest calibrating its TSC against the PIT.
		"-icount", "shift=auto",
		"-kernel", vmlinux, "-initrd", initramfs,
		"-append", "console=ttyS0 panic=-1",
		"-nographic", "-monitor", "none", "-no-reboot",
		// Each NIC on a hub of its own: the guest's packets go nowhere
		// (QEMU warns that the hubs are not connected to the host).
		"-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-device,netdev=n0",
		"-netdev", "hubport,id=n1,hubid=1", "-device", "virtio-net-pci,netdev=n1",
	}
	var console []byte
	var line string
	for attempt := 1; line == ""; attempt++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		console, err = exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
		cancel()
		line = testinitLine(console)
		switch {
		case line != "":
			t.Logf("attempt %d: the guest powered off after %v", attempt, time.Since(start).Round(time.Millisecond))
		case attempt == 1:
			// Should the guest stall all the same, one more try.
			t.Logf("attempt 1: no TESTINIT line (qemu: %v), retrying; console:\n%s", err, console)
		default:
			t.Fatalf("attempt %d: no TESTINIT line (qemu: %v); console:\n%s", attempt, err, console)
		}
	}

	if !strings.HasPrefix(line, "TESTINIT OK ") {
		t.Fatalf("guest said\n%s\nconsole:\n%s", line, console)
	}
	var names []string
	for _, p := range modules {
		name, _, _ := strings.Cut(filepath.Base(p), ".ko") // as in load.order
		names = append(names, name)
	}
	for _, want := range []string{
		" modules=" + strings.Join(names, ",") + " ",
		" virtiofs=true ",
		"@platform", // the MMIO NIC
		"@pci",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("guest said\n%s\nwant it to contain %q", line, want)
		}
	}
}

// writeTestInitramfs builds testdata/testinit and writes an initramfs with
// it as /init to path.
func writeTestInitramfs(t *testing.T, path string, modules []string) {
	t.Helper()
	initPath := filepath.Join(t.TempDir(), "init")
	build := exec.Command("go", "build", "-o", initPath, "./testdata/testinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static: the initramfs has no libc
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building testinit: %v\n%s", err, out)
	}
	initProgram, err := os.ReadFile(initPath)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteInitramfs(f, initProgram, modules); err != nil {
		t.Fatalf("WriteInitramfs: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// testinitLine returns the console line that testinit wrote, or "".
func testinitLine(console []byte) string {
	s := bufio.NewScanner(bytes.NewReader(console))
	for s.Scan() {
		if _, rest, ok := strings.Cut(s.Text(), "TESTINIT "); ok {
			return "TESTINIT " + strings.TrimSpace(rest)
		}
	}
	return ""
}
