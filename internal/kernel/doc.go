// Package kernel prepares a guest's kernel and initramfs from an image root.
//
// Every microVM boots the kernel of the shared image (Debian's
// linux-image-cloud-amd64 by default). Going from an image root to what a
// VMM boots takes four steps, one function each:
//
//   - [Find] picks the newest /boot/vmlinuz-VERSION of the image and its
//     /lib/modules/VERSION.
//   - [ExtractVmlinux] turns the bzImage into the uncompressed vmlinux ELF.
//     QEMU boots either; Cloud Hypervisor boots only an ELF, and only
//     through the PVH entry point, which [HasPVH] checks for.
//   - [Modules] resolves the modules a guest needs ([GuestModules]) and what
//     they depend on, in the order they must be loaded.
//   - [WriteInitramfs] packs the guest's PID 1 and those modules into a
//     gzip-compressed newc cpio archive. The init reads [LoadOrder] and
//     loads each module with finit_module(2).
//
// Facts this package relies on, found on Debian 12's cloud kernel:
//
//   - The bzImage payload is LZ4 in the "legacy" frame (magic 0x184C2102,
//     then blocks each prefixed by their 4-byte compressed size), and, as
//     for every format, its last 4 bytes are the uncompressed size.
//   - virtio, virtio_ring, virtio_mmio, virtio_pci, virtio_net, fuse and
//     virtiofs are modules, not built in; the modules are plain .ko files.
//     Other kernels may ship .ko.xz, .ko.zst or .ko.gz, which
//     [WriteInitramfs] decompresses so that loading them needs no
//     decompressor in the kernel.
//   - The kernel package ships no modules.dep: depmod writes it when the
//     package is installed, as it is in any image.
package kernel
