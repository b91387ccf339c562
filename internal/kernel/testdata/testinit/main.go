// Command testinit is the PID 1 of the boot test of package kernel. It
// loads the modules of the initramfs in order, reports what the guest then
// has on one line that starts with "TESTINIT", and powers the VM off.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if err := run(); err != nil {
		fmt.Println("TESTINIT FAIL", err)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func run() error {
	order, err := os.ReadFile("/lib/modules/load.order")
	if err != nil {
		return err
	}
	var loaded []string
	for _, name := range strings.Fields(string(order)) {
		if err := load("/lib/modules/" + name); err != nil {
			return fmt.Errorf("loading %s: %w", name, err)
		}
		loaded = append(loaded, strings.TrimSuffix(name, ".ko"))
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		return err
	}
	if err := unix.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		return err
	}
	filesystems, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return err
	}
	// A network interface proves that virtio_net and a transport bound a
	// device the test attached. Its device is the virtio device; the bus
	// of that device's parent names the transport: pci or platform (MMIO).
	links, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return err
	}
	var nets []string
	for _, l := range links {
		bus, err := os.Readlink("/sys/class/net/" + l.Name() + "/device/../subsystem")
		if err != nil {
			continue // lo has no device
		}
		nets = append(nets, l.Name()+"@"+filepath.Base(bus))
	}
	fmt.Printf("TESTINIT OK modules=%s virtiofs=%t net=%s\n",
		strings.Join(loaded, ","), strings.Contains(string(filesystems), "\tvirtiofs\n"), strings.Join(nets, ","))
	return nil
}

func load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err == unix.ENOENT {
		return fmt.Errorf("%w (a module it needs is not loaded yet)", err)
	}
	return err
}
