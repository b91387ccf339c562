// Command microvm-init is the PID 1 of a microVM's initramfs. It turns the
// kernel, a few modules and three virtiofs shares into a running image, in
// this order:
//
//  1. Mount devtmpfs on /dev, proc on /proc and sysfs on /sys: loading
//     modules, reading the command line and configuring the network need
//     them, and the image's init gets them as they are.
//  2. Read the VM's settings from /proc/cmdline (see [Config]): name,
//     address, gateway and DNS resolver. This comes before anything slow, so
//     that a bad command line fails at once.
//  3. Load the modules of /lib/modules/load.order, in that order, with
//     finit_module(2): virtio's transports (MMIO for QEMU's microvm, PCI for
//     Cloud Hypervisor), virtio_net and virtiofs. Debian's cloud kernel has
//     them as modules, not built in.
//  4. Mount the virtiofs share "image" read-only on /mnt, the new root, then
//     the VM's own "etc" and "var" shares on /mnt/etc and /mnt/var,
//     writable. The image is shared by every VM; /etc and /var persist on
//     the host.
//  5. Configure the network with netlink: lo up; the first ethernet link
//     (eth0) gets the VM's address and comes up; the default route goes via
//     the gateway. Set the hostname. The image runs no DHCP client: this
//     configuration is the guest's for good. If the VM's /etc has no
//     resolv.conf (the host normally writes it), write one naming the
//     resolver.
//  6. Switch root, as switch_root(8) does: move /dev, /proc and /sys into
//     the new root, delete the initramfs's files (they would hold on to
//     guest memory forever), move the new root onto /, chroot into it and
//     exec /sbin/init (microvm.init=PATH overrides it, for tests).
//
// It prints "started" first, then a line for each step on the console,
// "[ seconds] microvm-init: what happened", with the time since boot the
// way the kernel stamps its own lines, so that the console log shows where
// boot time goes. On any failure
// microvm-init prints one line, "microvm-init: what failed: why", and powers
// the VM off: a VM without its filesystems or its network is of no use, and
// its VMM exiting is what the supervisor and the person watching notice.
//
// It is a static binary (CGO_ENABLED=0): the initramfs has no libc.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Paths in the initramfs.
const (
	loadOrder = "/lib/modules/load.order" // kernel.LoadOrder: the modules to load, one file name a line
	newRoot   = "/mnt"                    // where the image is mounted before it becomes /
)

func main() {
	// Run anywhere but as a guest's PID 1, this program would mount over
	// the host's /dev and power it off.
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "microvm-init: not PID 1: this is a microVM's init, for its kernel to start")
		os.Exit(2)
	}
	// run returns only on failure: on success it has exec'ed the image's init.
	fail(run())
}

func run() error {
	// The console's first line when the kernel command line has quiet:
	// when the kernel was done.
	logf("started")
	if err := mountKernelFS(); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}
	c, err := parseCmdline(string(cmdline))
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}
	n, err := loadModules(loadOrder)
	if err != nil {
		return err
	}
	logf("modules loaded (%d)", n)
	if err := mountShares(newRoot, c.ImageRW); err != nil {
		return err
	}
	logf("shares mounted")
	for _, v := range c.Volumes {
		dev, err := mountVolume(newRoot, v)
		if err != nil {
			return err
		}
		logf("volume %s (%s) mounted at %s", v.name, dev, v.dir)
	}
	link, err := configureNetwork(c.Addr, c.Gateway)
	if err != nil {
		return err
	}
	logf("%s %s via %s", link, c.Addr, c.Gateway)
	if err := unix.Sethostname([]byte(c.Name)); err != nil {
		return fmt.Errorf("setting hostname %s: %w", c.Name, err)
	}
	logf("hostname %s", c.Name)
	written, err := writeResolvConf(newRoot+"/etc/resolv.conf", c.DNS)
	if err != nil {
		return err
	}
	if written {
		logf("wrote /etc/resolv.conf (nameserver %s)", c.DNS)
	}
	logf("switching root to %s", c.Init)
	return switchRoot(newRoot, c.Init)
}

// logf prints a progress line on the console, stamped with the time since
// boot as the kernel stamps its messages ("[    1.234567] ...").
func logf(format string, args ...any) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) // every kernel since 2.6.39 has it; 0 would only misdate a line
	d := time.Duration(ts.Nano())
	fmt.Printf("[%5d.%06d] microvm-init: %s\n", d/time.Second, d%time.Second/time.Microsecond, fmt.Sprintf(format, args...))
}

// fail prints err on one line and powers the VM off. If the kernel cannot
// power off, exiting makes it panic ("Attempted to kill init"), and the
// command line's panic=-1 and reboot=t turn that into a reset, which ends
// the VMM (QEMU runs with -no-reboot): either way the VM never hangs.
func fail(err error) {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Printf("microvm-init: %s\n", msg)
	// The console is a tty: the line may still be in its buffer, which
	// power off would throw away. Wait until it is sent (tcdrain).
	// Nothing is left to report a failure to: power off whatever happens.
	_ = unix.IoctlSetInt(int(os.Stdout.Fd()), unix.TCSBRK, 1)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(1)
}

// loadModules loads the modules the file at order names, in that order,
// from its directory, and returns how many it names. A module that is
// already there (EEXIST) is fine: a kernel may have it built in.
func loadModules(order string) (int, error) {
	list, err := os.ReadFile(order)
	if err != nil {
		return 0, fmt.Errorf("loading modules: %w", err)
	}
	dir := order[:strings.LastIndexByte(order, '/')+1]
	names := strings.Fields(string(list))
	for _, name := range names {
		if err := loadModule(dir + name); err != nil {
			return 0, fmt.Errorf("loading module %s: %w", name, err)
		}
	}
	return len(names), nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	switch err := unix.FinitModule(int(f.Fd()), "", 0); err {
	case nil, unix.EEXIST:
		return nil
	case unix.ENOENT:
		// finit_module says ENOENT for a symbol that no loaded module
		// exports: load.order has a module before its dependency.
		return fmt.Errorf("%w (a module it depends on is not loaded yet)", err)
	default:
		return err
	}
}
