package vmm

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OpenTAP opens the VM's TAP once per queue and returns the files, to be
// handed to the VMM (exec.Cmd.ExtraFiles). The supervisor opens them as
// root, so the VMM, which runs as an unprivileged user, needs no access to
// /dev/net/tun (which some hosts keep at mode 0600) — only its descriptors.
// This is how libvirt gives QEMU its network too.
func OpenTAP(name string, queues int) ([]*os.File, error) {
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	var files []*os.File
	for i := 0; i < queues; i++ {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
		}
		var req struct {
			name  [unix.IFNAMSIZ]byte
			flags uint16
			_     [22]byte
		}
		copy(req.name[:], name)
		req.flags = flags
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
			unix.Close(fd)
			closeAll(files)
			return nil, fmt.Errorf("attaching to TAP %s (queue %d): %w (is the host part applied, and the VM not already running?)", name, i, errno)
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
