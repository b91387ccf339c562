package vmm

import (
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/jail"
)

// Jail is the jail the VMM of s runs in (package jail), whichever the
// backend: program is the VMM's executable (the command's path), accel
// the host's accelerator. It holds, each at its host path:
//
//	read-only   the system's program directories (jail.Program), the
//	            kernel and initramfs, the virtiofs sockets (a socket is
//	            connected to, never written, through a read-only bind)
//	read-write  the VM's own VMM directory: its control socket and
//	            console socket (the console log is the supervisor's,
//	            written from the pipe the VMM is given, Spec.Console)
//	devices     jail.BaseDevices, and /dev/kvm under kvm
//
// The TAP's queues, the console and the volumes need nothing: the VMM is
// given their descriptors (Spec.TAP, Spec.Console, Spec.Volumes). The caller sets the user (the VM's) and wraps the command.
func (s Spec) Jail(program string, accel config.Accel) jail.Jail {
	ro := jail.Program(program)
	ro = append(ro, s.Kernel, s.Initramfs)
	for _, sh := range s.Shares {
		ro = append(ro, sh.Socket)
	}
	devices := append([]string(nil), jail.BaseDevices...)
	if accel == config.KVM {
		// Neither QEMU nor Cloud Hypervisor takes /dev/kvm as a
		// descriptor; the device node is bound in, as Firecracker's
		// jailer makes it in its jail.
		devices = append(devices, "/dev/kvm")
	}
	return jail.Jail{
		Root:     s.VM.JailDir(),
		ReadOnly: ro,
		Writable: []string{s.VM.VMMDir()},
		Devices:  devices,
	}
}
