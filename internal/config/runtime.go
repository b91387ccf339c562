package config

import "path/filepath"

// Runtime paths: where a running VM's sockets and console log live, and where
// an image's files are. Like every other name, they are derived here and only
// here; the supervisor, the VMM backends and the CLI read them.
//
//	RUN_DIR/NAME/api.sock               Cloud Hypervisor's REST API (hypervisor = "cloud-hypervisor")
//	RUN_DIR/NAME/qmp.sock               QEMU's QMP (hypervisor = "qemu")
//	RUN_DIR/NAME/virtiofs-TAG.sock      one vhost-user socket per virtiofs share
//	RUN_DIR/NAME/console.log            the guest's serial console, rewritten at each start
//	STATE_DIR/images/IMAGE/rootfs       the image's root filesystem, written only by the image builder
//	STATE_DIR/images/IMAGE/vmlinuz      the image's kernel as its distribution ships it
//	STATE_DIR/images/IMAGE/vmlinux      the same kernel uncompressed (PVH entry), what the VMMs boot
//	STATE_DIR/images/IMAGE/image.json   what the image was made from (its recipe and version)
//	RUN_DIR/images/IMAGE.initramfs      the initramfs with the guest's PID 1 (cmd/microvm-init)
//	RUN_DIR/images/IMAGE                a read-only bind mount of rootfs: what guests are given
//
// RUN_DIR is a tmpfs on most hosts, which suits what lives there: sockets and
// mounts do not survive a reboot either. Unix socket paths are limited to 107
// bytes, so RUN_DIR must stay short.

// ControlSocket is the VMM's control socket: Cloud Hypervisor's REST API or
// QEMU's QMP, by the VM's hypervisor.
func (vm *VM) ControlSocket() string {
	if vm.Hypervisor == "qemu" {
		return filepath.Join(vm.RunDir, "qmp.sock")
	}
	return filepath.Join(vm.RunDir, "api.sock")
}

// ShareSocket is the vhost-user socket of the virtiofs share tagged tag.
func (vm *VM) ShareSocket(tag string) string {
	return filepath.Join(vm.RunDir, "virtiofs-"+tag+".sock")
}

// ConsoleLog is the file the guest's serial console (ttyS0) is written to.
func (vm *VM) ConsoleLog() string { return filepath.Join(vm.RunDir, "console.log") }

// TAPQueues is how many queue pairs the VM's network device has: one per
// vCPU. Above one, the TAP must be created multi_queue and the VMM must open
// it with as many queues, or the kernel refuses the VMM's TUNSETIFF (EINVAL).
func (vm *VM) TAPQueues() int { return vm.VCPU }

// ImageDir is where the image called name keeps its files.
func (h Host) ImageDir(name string) string { return filepath.Join(h.StateDir, "images", name) }

// ImageRootfs is the image's root filesystem, as the image builder writes it.
func (h Host) ImageRootfs(name string) string { return filepath.Join(h.ImageDir(name), "rootfs") }

// ImageKernel is the image's kernel as its distribution ships it (bzImage).
func (h Host) ImageKernel(name string) string { return filepath.Join(h.ImageDir(name), "vmlinuz") }

// ImageVmlinux is the image's kernel uncompressed, with its PVH entry point:
// Cloud Hypervisor can only boot this form, and QEMU boots it faster.
func (h Host) ImageVmlinux(name string) string { return filepath.Join(h.ImageDir(name), "vmlinux") }

// ImageMeta is the file that says what the image was made from: the
// recipe and its version, or the tarball it was imported from.
func (h Host) ImageMeta(name string) string { return filepath.Join(h.ImageDir(name), "image.json") }

// ImageInitramfs is the initramfs every VM of the image boots with. It
// holds the running program's guest init as well as the image's kernel
// modules, so it is made when a VM starts, in RUN_DIR: the image itself
// stays as built (on ZFS, read-only).
func (h Host) ImageInitramfs(name string) string {
	return filepath.Join(h.RunDir, "images", name+".initramfs")
}

// ImageView is the read-only bind mount of ImageRootfs that the guests'
// "image" share serves. The kernel refuses writes through it, whatever the
// virtiofs daemon or the guest does (see package virtiofs).
func (h Host) ImageView(name string) string { return filepath.Join(h.RunDir, "images", name) }
