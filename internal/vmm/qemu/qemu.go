// Package qemu is the QEMU backend of package vmm: qemu-system-x86_64 with
// the microvm machine (no PCI, no firmware, virtio devices on MMIO), and a
// client of QMP, QEMU's control protocol, to stop it.
//
// Every option was checked against QEMU 7.2 (Debian 12): `-M microvm,help`,
// `-device help`, and a Debian cloud kernel booted with it under TCG, with
// its three virtiofs shares and a (multi-queue) TAP; the KVM variant differs
// only in -accel, -cpu, pit and pic. What 7.2 needs that is not obvious:
//
//   - -global virtio-mmio.force-legacy=false: microvm's MMIO transport
//     defaults to legacy virtio, which vhost-user-fs refuses.
//   - shared guest memory for virtiofs: a memfd backend with share=on,
//     made the machine's RAM by memory-backend= (no NUMA node needed).
//   - -device i8042: microvm has no keyboard controller, and ctrl-alt-del
//     needs one (see StopSteps).
//   - -sandbox on,...=deny: QEMU's seccomp filter, with every optional
//     denial; 7.2 boots with it, virtiofs and TAP descriptors included.
package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Backend runs QEMU.
type Backend struct {
	Binary string // the program; "qemu-system-x86_64", looked up in PATH, if empty
	// Accel is the accelerator: kvm on real hosts, tcg (emulation,
	// slow, for tests on machines where KVM is unusable).
	Accel config.Accel
	// VhostNet moves the guest's packets in the host kernel (vhost=on)
	// instead of QEMU's main loop. It needs KVM, and /dev/vhost-net
	// readable and writable by the VMM's user; most hosts have neither
	// by default for an unprivileged user, so it is off unless asked for.
	VhostNet bool
	// TSCkHz, under tcg only, is the host's TSC frequency in kHz, which
	// the guest's TSC runs at under emulation. It is given to the guest
	// kernel (tsc_early_khz=) so that it does not calibrate its clocks,
	// which hangs the boot on a busy host. New reads it from the host;
	// zero leaves the guest to calibrate.
	TSCkHz int
	// TSCReliable, under tcg only, says the guest's TSC (which under
	// emulation is the host's) can be trusted: tsc=reliable then spares
	// the guest kernel its clocksource watchdog. New sets it when the
	// host's own kernel keeps time with its TSC; under KVM the guest uses
	// kvmclock and it is not given.
	TSCReliable bool
	// TBSizeMiB, under tcg only, is the size of QEMU's translated-code
	// cache (-accel tcg,tb-size=); 0 leaves QEMU's default (1 GiB, or an
	// eighth of the host's memory if less). New sets TBSizeMiB.
	TBSizeMiB int
	// Grace is how long the guest has to shut down after ctrl-alt-del and
	// the power button; vmm.DefaultGrace if zero.
	Grace time.Duration
}

// TBSizeMiB is the translated-code cache QEMU gets under emulation, in
// MiB, chosen by measurement (docs/guest.md): a lean boot fills about 160
// MiB of it, and QEMU's default, 1 GiB, lets it grow with the VM's age.
var TBSizeMiB = 128

// New returns the backend for the accelerator accel.
func New(accel config.Accel) *Backend {
	b := &Backend{Accel: accel}
	if accel == config.TCG {
		b.TSCkHz = HostTSCkHz()
		b.TSCReliable = hostClocksource() == "tsc"
		b.TBSizeMiB = TBSizeMiB
	}
	return b
}

// HostTSCkHz returns the host's TSC frequency in kHz, or 0 if unknown. It
// reads "cpu MHz" in /proc/cpuinfo, which is the TSC frequency on the
// virtual machines where TCG is used (no frequency scaling there); on a
// host whose cores change speed it is only close, and the guest's clock
// then drifts as much, which tests under TCG can bear.
func HostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	return cpuinfoTSCkHz(f)
}

// hostClocksource is the clocksource the host's kernel keeps time with.
func hostClocksource() string {
	// Unreadable is unknown: "" is not "tsc", and the guest keeps its watchdog.
	b, _ := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource")
	return strings.TrimSpace(string(b))
}

// cpuinfoTSCkHz returns the first "cpu MHz" of a /proc/cpuinfo, in kHz.
func cpuinfoTSCkHz(r io.Reader) int {
	s := bufio.NewScanner(r)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0
		}
		return int(mhz * 1000)
	}
	return 0
}

// Command returns the qemu-system-x86_64 command that boots s.
func (b *Backend) Command(s vmm.Spec) (*exec.Cmd, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	vm := s.VM
	var cpu, timers string
	var extra []string // kernel command line words for this machine
	switch b.Accel {
	case config.KVM:
		// SGX crashes QEMU's microvm (QEMU issue 2142).
		cpu = "host,-sgx"
		// KVM gives the guest kvmclock; the legacy timer and interrupt
		// controller would only cost boot time.
		timers = "pit=off,pic=off"
	case config.TCG:
		cpu = "max"
		// Emulation gives the guest no kvmclock, and microvm has no HPET
		// or ACPI PM timer: the kernel can only calibrate its TSC against
		// the PIT, and on a busy host that fails ("Unable to calibrate
		// against PIT") and the boot hangs. Telling it the TSC frequency
		// (which under TCG is the host's) skips the calibration.
		timers = "pit=on,pic=on"
		if b.TSCkHz > 0 {
			extra = append(extra, fmt.Sprintf("tsc_early_khz=%d", b.TSCkHz))
		}
		if b.TSCReliable {
			extra = append(extra, "tsc=reliable")
		}
		// The guest kernel's defences against speculative execution
		// (retpolines, return stack filling) defend nothing under
		// emulation: the emulated CPU does not speculate, and its calls
		// and returns are not the host's. They only cost time.
		extra = append(extra, "mitigations=off")
	default:
		return nil, fmt.Errorf("building QEMU command for %s: accelerator %q is not kvm or tcg", vm.Name, b.Accel)
	}
	accel := string(b.Accel)
	if b.Accel == config.TCG && b.TBSizeMiB > 0 {
		accel += fmt.Sprintf(",tb-size=%d", b.TBSizeMiB)
	}
	mem := fmt.Sprintf("%dM", vm.MemoryMiB)
	args := []string{
		"-name", vm.Name,
		// rtc=on: the guest's clock starts at the right time. acpi=on: the
		// power button (system_powerdown). No option ROMs, no PCI, no USB.
		"-M", "microvm,x-option-roms=off," + timers + ",rtc=on,isa-serial=on,acpi=on,pcie=off,usb=off,memory-backend=mem",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", fmt.Sprint(vm.VCPU),
		"-m", mem,
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
		"-global", "virtio-mmio.force-legacy=false",
		// Nothing but what is listed here: no default devices, no
		// configuration files, no display; a guest reset makes QEMU exit
		// (the guest's reboot is a restart of the VM by its supervisor).
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// seccomp: no obsolete system calls, no setuid or other privilege
		// changes, no new processes or programs, no scheduler or resource
		// changes. A guest that breaks out into QEMU meets these too.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-kernel", s.Kernel,
		"-initrd", s.Initramfs,
		"-append", vmm.Cmdline(vm, extra...),
		"-device", "i8042",
		"-device", "virtio-rng-device",
	}
	// The serial console is a socket for `microvm console`, and is
	// logged, whether or not anyone is attached, into the pipe the
	// supervisor reads (Spec.Console), passed as an fd set: QEMU's
	// logfile= takes /dev/fdset/N for a descriptor it was given, opened
	// for appending (QEMU 7.2 refuses to reuse it for O_TRUNC: "Could
	// not dup FD").
	serial := fmt.Sprintf("socket,id=serial0,path=%s,server=on,wait=off", vm.ConsoleSocket())
	if fd := s.ConsoleFd(); fd >= 0 {
		args = append(args, "-add-fd", fmt.Sprintf("fd=%d,set=1,opaque=console", fd))
		serial += ",logfile=/dev/fdset/1,logappend=on"
	}
	args = append(args, "-chardev", serial, "-serial", "chardev:serial0")
	for i, sh := range s.Shares {
		id := fmt.Sprintf("fs%d", i)
		args = append(args,
			"-chardev", fmt.Sprintf("socket,id=%s,path=%s", id, sh.Socket),
			"-device", fmt.Sprintf("vhost-user-fs-device,chardev=%s,tag=%s,queue-size=1024", id, sh.Tag),
		)
	}
	for i, path := range s.VolumePaths() {
		id := fmt.Sprintf("vol%d", i)
		args = append(args,
			"-drive", fmt.Sprintf("file=%s,if=none,id=%s,format=raw,discard=unmap", path, id),
			"-device", fmt.Sprintf("virtio-blk-device,drive=%s,serial=%s", id, s.Volumes[i].Name),
		)
	}
	netdev := fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no", vm.TAP)
	if fds := s.TAPFds(); len(fds) > 0 {
		netdev = "tap,id=net0,fds=" + joinInts(fds, ":")
	}
	device := fmt.Sprintf("virtio-net-device,netdev=net0,mac=%s", vm.MAC)
	if b.VhostNet {
		if b.Accel != config.KVM {
			return nil, fmt.Errorf("building QEMU command for %s: vhost-net needs the kvm accelerator", vm.Name)
		}
		netdev += ",vhost=on"
	}
	if q := vm.TAPQueues(); q > 1 {
		// The TAP was created multi_queue; QEMU must open it so.
		if len(s.TAP) == 0 {
			netdev += fmt.Sprintf(",queues=%d", q)
		}
		device += ",mq=on"
	}
	args = append(args,
		"-netdev", netdev,
		"-device", device,
		"-qmp", "unix:"+vm.ControlSocket()+",server=on,wait=off",
	)
	return vmm.NewCmd(b.Binary, Program, s, args), nil
}

// Ping returns nil if QMP answers query-status.
func (b *Backend) Ping(ctx context.Context, vm *config.VM, pid int) error {
	q, err := DialQMP(ctx, vm.ControlSocket(), pid)
	if err != nil {
		return err
	}
	defer q.Close()
	_, err = q.Status(ctx)
	return err
}

// StopSteps: first ctrl-alt-del and the ACPI power button together,
// whichever the guest acts on. A guest with systemd turns ctrl-alt-del into
// a reboot (ctrl-alt-del.target), which with -no-reboot makes QEMU exit
// once the guest has shut down cleanly; that works in a minimal Debian
// guest, where nothing listens to the power button unless systemd-logind
// or acpid runs. (This is how microvm.nix stops QEMU guests.) Then QMP quit,
// which stops QEMU without the guest's knowledge.
func (b *Backend) StopSteps(vm *config.VM, pid int) []vmm.Step {
	sock := vm.ControlSocket()
	grace := b.Grace
	if grace == 0 {
		grace = vmm.DefaultGrace
	}
	return []vmm.Step{
		{Name: "QMP send-key ctrl-alt-del and system_powerdown", Grace: grace,
			Do: func(ctx context.Context) error {
				q, err := DialQMP(ctx, sock, pid)
				if err != nil {
					return err
				}
				defer q.Close()
				if err := q.SendKeys(ctx, "ctrl", "alt", "delete"); err != nil {
					return err
				}
				return q.Powerdown(ctx)
			}},
		{Name: "QMP quit", Grace: vmm.HardGrace,
			Do: func(ctx context.Context) error {
				q, err := DialQMP(ctx, sock, pid)
				if err != nil {
					return err
				}
				defer q.Close()
				return q.Quit(ctx)
			}},
	}
}

func joinInts(ns []int, sep string) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}
