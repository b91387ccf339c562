package config

import (
	"io/fs"
	"path/filepath"
)

// Runtime paths: where a running VM's sockets and console log live, and where
// an image's files are. Like every other name, they are derived here and only
// here; the supervisor, the VMM backends and the CLI read them.
//
// A VM's run directory has two parts. RUN_DIR/NAME is root's (root:root,
// 0711: others may reach what is in it by name, but not list it or write
// to it): the supervisor's records (lifecycle.go) and the virtiofs sockets,
// which the supervisor makes for its daemons and only the VM's group may
// connect to.
// RUN_DIR/NAME/vmm is the VMM's (owned by the VM's user, 0700, made anew at
// each start): what the VMM creates. Root never follows a name the VMM
// could have replaced: it opens files there without following symlinks,
// and checks who listens on a socket before talking to it.
//
//	RUN_DIR/NAME/virtiofs-TAG.sock      one vhost-user socket per virtiofs share (root:USER-NAME 0770)
//	RUN_DIR/NAME/vmm/                   the VMM's own directory (USER-NAME 0700)
//	RUN_DIR/NAME/vmm/api.sock           Cloud Hypervisor's REST API (hypervisor = "cloud-hypervisor")
//	RUN_DIR/NAME/vmm/qmp.sock           QEMU's QMP (hypervisor = "qemu")
//	RUN_DIR/NAME/vmm/console.sock       the guest's serial console, for `microvm console` (QEMU)
//	RUN_DIR/NAME/jail/                  empty (root's 0700): the VMM's jail root is mounted on it in the jail's own mount namespace
//	STATE_DIR/images/IMAGE/rootfs       the image's root filesystem, written only by the image builder
//	STATE_DIR/images/IMAGE.V/layer      or, for version V of an [image.NAME] on plain directories, what it adds to its base
//	STATE_DIR/images/IMAGE/vmlinuz      the image's kernel as its distribution ships it
//	STATE_DIR/images/IMAGE/vmlinux      the same kernel uncompressed (PVH entry), what the VMMs boot
//	STATE_DIR/images/IMAGE/image.json   what the image was made from (its recipe and version)
//	RUN_DIR/images/IMAGE.initramfs      the initramfs with the guest's PID 1 (cmd/microvm-init)
//	RUN_DIR/images/IMAGE                a read-only bind mount of rootfs: what guests are given
//
// RUN_DIR is a tmpfs on most hosts, which suits what lives there: sockets and
// mounts do not survive a reboot either. Unix socket paths are limited to 107
// bytes, so RUN_DIR must stay short.

// Modes of the directories the program makes for each VM, set through
// their descriptors at each start.
const (
	RunDirMode   fs.FileMode = 0o711 // RUN_DIR/NAME: root's; others reach names in it but cannot list or change it
	VMMDirMode   fs.FileMode = 0o700 // RUN_DIR/NAME/vmm: the VM user's alone
	StateDirMode fs.FileMode = 0o700 // STATE_DIR/NAME: root's alone; the guest sees etc and var in it through virtiofsd
)

// VMMDir is the part of the VM's run directory that its VMM writes.
func (vm *VM) VMMDir() string { return filepath.Join(vm.RunDir, "vmm") }

// ControlSocket is the VMM's control socket: Cloud Hypervisor's REST API or
// QEMU's QMP, by the VM's hypervisor.
func (vm *VM) ControlSocket() string {
	return filepath.Join(vm.VMMDir(), controlSockets[vm.Hypervisor])
}

// ShareSocket is the vhost-user socket of the virtiofs share tagged tag.
func (vm *VM) ShareSocket(tag string) string {
	return filepath.Join(vm.RunDir, "virtiofs-"+tag+".sock")
}

// ConsoleLog is the file the guest's serial console (ttyS0) is written to:
// the VMM writes the console into a pipe, and the supervisor, root, writes
// it here, in the root-only part of the run directory, rotated at a fixed
// size (package supervise, LogMax).
func (vm *VM) ConsoleLog() string { return filepath.Join(vm.RunDir, "console.log") }

// TAPQueues is how many queue pairs the VM's network device has: one per
// vCPU. Above one, the TAP must be created multi_queue and the VMM must open
// it with as many queues, or the kernel refuses the VMM's TUNSETIFF (EINVAL).
func (vm *VM) TAPQueues() int { return vm.VCPU }

// ImageDir is where the image called name keeps its files.
func (h Host) ImageDir(name string) string { return filepath.Join(h.StateDir, "images", name) }

// ImageLayer is, for an image made from another one with storage =
// "dir", what it adds to its base: an overlayfs upper layer, served
// through an overlay mount whose lower layers are its base's.
func (h Host) ImageLayer(name string) string { return filepath.Join(h.ImageDir(name), "layer") }

// PackageCache holds the Debian packages and package lists downloaded for
// images made from another ([image.NAME]), kept between builds so a package
// is downloaded once: STATE_DIR/images/.cache/apt, with apt's archives and
// lists directories.
func (h Host) PackageCache() string { return filepath.Join(h.ImagesDir(), ".cache", "apt") }

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

// maxSocketPath is the longest path a Unix socket can have on Linux.
const maxSocketPath = 107

// socketPaths rejects a run_dir too long for the sockets in it.
func (p *parser) socketPaths() {
	for _, vm := range p.in.VMs {
		for _, s := range []string{vm.ShareSocket("secrets"), vm.ControlSocket(), vm.ConsoleSocket()} {
			if len(s) > maxSocketPath {
				at := p.in.keys["host.run_dir"]
				p.errorf(at, "run_dir %q is too long for the sockets of vm.%s (%s is %d bytes; a Unix socket path has at most %d); use a shorter run_dir, such as %q", p.in.Host.RunDir, vm.Name, s, len(s), maxSocketPath, DefaultRunDir)
				return
			}
		}
	}
}

// ImageRecord says which image directory vm's supervisor boots it from,
// while it runs: the view of that image stays mounted until the last VM
// that records it has stopped.
func (vm *VM) ImageRecord() string { return filepath.Join(vm.RunDir, "image.json") }

// ViewsLock is taken to mount, record and release the images' views.
func (h Host) ViewsLock() string { return filepath.Join(h.RunDir, "images", "views.lock") }
