// Package vmm runs a microVM's virtual machine monitor. A [Backend] turns the
// model into a VMM command line and knows how to stop that VMM; there are two,
// in the packages cloudhypervisor (the default: command line and REST API)
// and qemu (-M microvm and QMP), each registered as a [Hypervisor] with what
// it needs and can do. A [Machine] is one running VMM process.
//
// The supervisor picks the backend by the VM's hypervisor:
//
//	h, err := vmm.For(infra, vm) // the registry's entry for vm.Hypervisor
//	b := h.New(accel)             // "kvm" on real hosts, "tcg" in tests
//	spec := vmm.NewSpec(infra.Host, vm, vm.Image)
//	cmd, err := b.Command(spec)
//	// set cmd's user and output here
//	m, err := vmm.Start(b, vm, cmd)
//	err = m.Ready(ctx)
//	...
//	err = m.Stop(ctx)
//
// Both VMMs boot the same files: the image's uncompressed kernel (vmlinux,
// through its PVH entry point), its initramfs, and the kernel command line of
// [Cmdline]; and they give the guest the same devices: a serial console
// written to a file, one network device on the VM's TAP, and the three
// virtiofs shares of package virtiofs.
package vmm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
)

// Cmdline returns the kernel command line of vm's guest. It is the one
// definition of what the guest's init (cmd/microvm-init) reads, and reads
// like this for the design's first VM:
//
//	console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=vm1 microvm.ip=10.1.0.2/24 microvm.gw=10.1.0.1 microvm.dns=1.1.1.1
//
// For the kernel, a VM's whose devices are known:
//
//	console=ttyS0   kernel messages and the login prompt go to the serial port, which both VMMs write to the console log
//	quiet           only warnings and worse go to that port while booting: every character written to an emulated
//	                UART is a trap into the VMM, and the kernel waits for each (docs/guest.md; the guest's
//	                journal and dmesg have every message)
//	i8042.noaux     the keyboard controller QEMU gives the guest (for ctrl-alt-del) has no mouse to probe
//	reboot=t        reboot by triple fault: both VMMs see it as a reset, and QEMU (-no-reboot) then exits
//	panic=-1        reboot at once on a panic, instead of hanging with the VMM still running
//
// For the init, always all four, each once:
//
//	microvm.name=NAME       the VM's name, its hostname
//	microvm.ip=ADDR/BITS    eth0's IPv4 address and prefix length
//	microvm.gw=ADDR         the IPv4 default gateway (the host's bridge)
//	microvm.dns=ADDR        the address of the DNS resolver, IPv4 or IPv6 (the gateway with an egress list)
//
// With IPv6 (the host's default), both of:
//
//	microvm.ip6=ADDR/64     eth0's IPv6 address and prefix length
//	microvm.gw6=ADDR        the IPv6 default gateway (the host's bridge)
//
// And with image_writable, so that the init mounts the image share
// read-write (the VM's own overlay over the image), and one a volume, for
// the init to mount it (the block device whose serial is NAME, ext4):
//
//	microvm.image=rw
//	microvm.volume=NAME:MOUNT
//
// Then come the words extra that a backend needs for its machine (QEMU
// under emulation adds tsc_early_khz=, tsc=reliable and mitigations=off), and QEMU may
// append words of its own (virtio_mmio.device=, when ACPI is off).
//
// Words are separated by single spaces, each is a flag or KEY=VALUE, and
// values never contain spaces. The init must ignore words it does not
// know. The virtiofs tags are not on the command line, they are fixed:
// image, etc and var ([virtiofs.TagImage]).
func Cmdline(vm *config.VM, extra ...string) string {
	words := []string{
		"console=ttyS0",
		"quiet",
		"i8042.noaux",
		"reboot=t",
		"panic=-1",
		"microvm.name=" + vm.Name,
		fmt.Sprintf("microvm.ip=%s/%d", vm.Addr, vm.Subnet.Bits()),
		"microvm.gw=" + vm.Gateway.String(),
		"microvm.dns=" + vm.Nameserver(),
	}
	if vm.HasIPv6() {
		words = append(words, fmt.Sprintf("microvm.ip6=%s/%d", vm.Addr6, vm.Subnet6.Bits()), "microvm.gw6="+vm.Gateway6.String())
	}
	if vm.ImageWritable {
		words = append(words, "microvm.image=rw")
	}
	for _, v := range vm.Volumes {
		words = append(words, "microvm.volume="+v.Name+":"+v.Mount)
	}
	return strings.Join(append(words, extra...), " ")
}

// Spec is everything a backend builds a command line from.
type Spec struct {
	VM        *config.VM
	Kernel    string           // uncompressed vmlinux with a PVH entry point
	Initramfs string           // with the guest's init
	Shares    []virtiofs.Share // image, etc, var, served by running daemons
	// TAP holds the VM's TAP opened once per queue (OpenTAP), given to the
	// VMM as descriptors 3, 4, ...; when empty, the VMM opens the TAP by
	// name itself, which needs access to /dev/net/tun.
	TAP []*os.File
	// Console is where the VMM writes the guest's serial console: the
	// write end of a pipe whose other end the supervisor reads into the
	// console log (which it rotates, so that a guest printing without
	// end cannot fill the host's run directory), given to the VMM as the
	// descriptor after the TAP's. Nil: the VMM writes no console.
	Console *os.File
	// Volumes are the VM's volumes, open (package volume), given to the
	// VMM after the TAP's and the console's descriptors; it opens each as
	// /proc/self/fd/N, a virtio block device whose serial is its name.
	Volumes []Volume
}

// Volume is one open volume.
type Volume struct {
	Name string
	File *os.File
}

// VolumePaths returns the paths the VMM opens s.Volumes by.
func (s Spec) VolumePaths() []string {
	first := 3 + len(s.TAP)
	if s.Console != nil {
		first++
	}
	out := make([]string, len(s.Volumes))
	for i := range s.Volumes {
		out[i] = fmt.Sprintf("/proc/self/fd/%d", first+i)
	}
	return out
}

// TAPFds returns the descriptor numbers the VMM sees s.TAP as.
func (s Spec) TAPFds() []int {
	fds := make([]int, len(s.TAP))
	for i := range fds {
		fds[i] = 3 + i // after stdin, stdout and stderr
	}
	return fds
}

// ConsoleFd is the descriptor number the VMM sees s.Console as, -1 if
// there is none.
func (s Spec) ConsoleFd() int {
	if s.Console == nil {
		return -1
	}
	return 3 + len(s.TAP)
}

// NewSpec returns the spec of vm booting the image in the directory
// imageDir (its image, or a version of it; package image resolves it): its
// kernel and initramfs, and the VM's shares.
func NewSpec(h config.Host, vm *config.VM, imageDir string) Spec {
	return Spec{
		VM:        vm,
		Kernel:    h.ImageVmlinux(imageDir),
		Initramfs: h.ImageInitramfs(imageDir),
		Shares:    virtiofs.Shares(h, vm, imageDir),
	}
}

// Check returns an error if s cannot be written as a VMM command line. Both
// VMMs separate the options of a device with commas, so no path may
// contain one.
func (s Spec) Check() error {
	if s.VM == nil {
		return errors.New("checking VMM spec: no VM")
	}
	if s.Kernel == "" || s.Initramfs == "" {
		return fmt.Errorf("checking VMM spec of %s: kernel and initramfs are required", s.VM.Name)
	}
	paths := []string{s.Kernel, s.Initramfs, s.VM.ControlSocket(), s.VM.ConsoleSocket()}
	for _, sh := range s.Shares {
		paths = append(paths, sh.Socket)
	}
	for _, p := range paths {
		if strings.Contains(p, ",") {
			return fmt.Errorf("checking VMM spec of %s: path %q contains a comma, which VMM options cannot carry", s.VM.Name, p)
		}
	}
	return nil
}

// NewCmd is the VMM process of a backend: bin (or def when empty) with args,
// given the spec's TAP, console and volume descriptors, in a process group of its own, so that a
// Ctrl-C in the supervisor's terminal reaches only the supervisor, which
// shuts the guest down before the VMM goes.
func NewCmd(bin, def string, s Spec, args []string) *exec.Cmd {
	if bin == "" {
		bin = def
	}
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = append([]*os.File(nil), s.TAP...)
	if s.Console != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, s.Console)
	}
	for _, v := range s.Volumes {
		cmd.ExtraFiles = append(cmd.ExtraFiles, v.File)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}
