package image

import (
	"io/fs"
	"os"
	"path"
	"strings"
)

// The lean recipe's changes to Debian, for a guest whose devices are known
// (virtio-mmio or PCI network and virtiofs, a serial port, the power
// button) and whose root is a read-only share. docs/guest.md says the same
// for people, with how to put each back. Under emulation every process
// the boot starts costs a large part of a second, so most of it is about
// starting fewer.
var (
	// leanGenerators are systemd generators that find nothing to do in
	// a microVM: no block devices (cryptsetup, integritysetup,
	// veritysetup, gpt-auto, hibernate-resume), no offline updates
	// (system-update), no kernel command line the program does not write
	// (debug, run), no SysV scripts without a unit and no /etc/rc.local
	// (sysv, rc-local), and the console is always ttyS0, whose getty is
	// enabled instead (getty). systemd skips a generator whose name is a
	// symlink to /dev/null in /etc/systemd/system-generators. fstab (/tmp,
	// and a user's own mounts) stays.
	leanGenerators = []string{
		"systemd-cryptsetup-generator", "systemd-integritysetup-generator", "systemd-veritysetup-generator",
		"systemd-gpt-auto-generator", "systemd-hibernate-resume-generator", "systemd-system-update-generator",
		"systemd-debug-generator", "systemd-run-generator", "systemd-sysv-generator", "systemd-rc-local-generator",
		"systemd-getty-generator",
	}

	// leanMasked are units of Debian's sysinit and multi-user targets
	// masked in the VM's /etc (a symlink to /dev/null): `systemctl
	// unmask` in a VM puts one back there.
	leanMasked = []string{
		// Mounts of kernel filesystems for huge pages, debugging,
		// tracing, FUSE's control files, configfs and POSIX message
		// queues, which a server seldom uses, and the modprobe@ units
		// they pull in.
		"dev-hugepages.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
		"sys-fs-fuse-connections.mount", "sys-kernel-config.mount", "dev-mqueue.mount",
		// Device nodes for modules not loaded yet (/dev/net/tun, ...),
		// so that opening one loads its module: without udev, a module
		// makes its nodes when it loads (modprobe tun).
		"kmod-static-nodes.service", "systemd-tmpfiles-setup-dev.service",
		// Skipped by their conditions (no disk to repartition), but
		// they pull in modprobe@loop and modprobe@dm_mod first.
		"systemd-repart.service",
		// The journal is kept in memory (Storage=volatile): nothing to
		// flush to /var.
		"systemd-journal-flush.service",
		// The guest's kernel is seeded by the CPU's RDRAND and virtio-rng.
		"systemd-random-seed.service",
		// Boot and runlevel records in utmp/wtmp (who -b, last reboot).
		"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
		// udev: the guest's devices are known, and made by the kernel's
		// devtmpfs; the modules they need are loaded by the guest's init
		// (kernel.GuestModules). Without udev no device unit appears,
		// hence the image's own serial-getty@ttyS0.service.
		"systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
		"systemd-udev-trigger.service", "systemd-udev-settle.service",
		// Every system user is made by the packages when the image is
		// built; the VM's /etc is a copy of the image's.
		"systemd-sysusers.service",
		// The root is a read-only share mounted by the guest's init:
		// nothing to remount.
		"systemd-remount-fs.service",
		// logind needs D-Bus, which the image leaves out (acpid handles
		// the power button instead).
		"systemd-logind.service",
		// Gettys on tty2 to tty6 when D-Bus is missing: a microVM has
		// no screen.
		"getty-static.service",
	}

	// leanDisabled are units Debian enables in /etc that the image
	// disables: `systemctl enable` in a VM puts one back.
	leanDisabled = []string{
		// Timers: the image is read-only, so apt cannot upgrade it
		// (apt-daily*), dpkg's database is the image's (dpkg-db-backup),
		// and there is no ext4 or discard-capable disk (e2scrub, fstrim).
		"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
		"e2scrub_reap.service",
		// A getty on the screen, which a microVM does not have.
		"getty@tty1.service",
		// Skipped by its condition (no pstore), but pulls in
		// modprobe@efi_pstore first.
		"systemd-pstore.service",
	}

	// leanRemoved are files the image does without: /etc/modules, read
	// through this link, lists no module, and without it systemd skips
	// systemd-modules-load (a file in /etc/modules-load.d brings it back).
	leanRemoved = []string{"etc/modules-load.d/modules.conf"}

	// leanFiles are written into the image. Those under /usr are the
	// image's own (a VM overrides them with a file or drop-in of its own in
	// /etc); those under /etc are each VM's.
	leanFiles = []struct{ name, text string }{
		{"usr/lib/systemd/system/serial-getty@ttyS0.service", serialGetty},
		{"etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service", "-> /usr/lib/systemd/system/serial-getty@ttyS0.service"},
		{"usr/lib/systemd/system/ssh.service.d/microvm.conf", sshEarly},
		{"usr/lib/systemd/journald.conf.d/microvm.conf", "# Written by microvm (image recipe debian): the journal is kept in memory,\n" +
			"# not written to /var over virtiofs. Storage=persistent in\n# /etc/systemd/journald.conf.d/ keeps it across restarts.\n[Journal]\nStorage=volatile\n"},
		{"usr/lib/systemd/system/microvm-shutdown-log.service", shutdownLog},
		{"etc/systemd/system/multi-user.target.wants/microvm-shutdown-log.service", "-> /usr/lib/systemd/system/microvm-shutdown-log.service"},
		{"etc/acpi/events/powerbtn", "# Written by microvm (image recipe debian): the ACPI power button, which\n" +
			"# is how Cloud Hypervisor (and QEMU's system_powerdown) ask for a shutdown.\nevent=button/power.*\naction=/sbin/poweroff\n"},
	}
)

// serialGetty is Debian's serial-getty@.service without its dependency on
// dev-ttyS0.device: the image has no udev, so no device unit ever appears,
// and the serial port is always there. As a unit of the instance's own
// name it takes the place of the template for ttyS0, the console on the
// kernel command line of every VM.
const serialGetty = `# Written by microvm (image recipe debian): Debian's serial-getty@.service
# without BindsTo=/After=dev-%i.device, a device unit that only udev makes
# (this image has no udev; every VMM gives the guest this serial port).
[Unit]
Description=Serial Getty on %I
Documentation=man:agetty(8) man:systemd-getty-generator(8)
After=systemd-user-sessions.service getty-pre.target
Before=getty.target
IgnoreOnIsolate=yes
Conflicts=rescue.service
Before=rescue.service

[Service]
ExecStart=-/sbin/agetty -o '-p -- \\u' --keep-baud 115200,57600,38400,9600 - $TERM
Type=idle
Restart=always
UtmpIdentifier=%I
StandardInput=tty
StandardOutput=tty
TTYPath=/dev/%I
TTYReset=yes
TTYVHangup=yes
IgnoreSIGPIPE=no
SendSIGHUP=yes

[Install]
WantedBy=getty.target
`

// sshEarly starts sshd as soon as what it needs is there: the network
// (configured by the guest's init before systemd starts), /etc and /var
// (mounted by the init too), /tmp and the journal's socket; not after the
// rest of the boot (basic.target), which it does not need.
const sshEarly = `# Written by microvm (image recipe debian): sshd starts as early as it can.
# The guest's init configured the network and mounted /etc and /var before
# systemd started, so sshd only waits for /tmp and the journal's socket.
[Unit]
DefaultDependencies=no
After=local-fs.target systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
# sshd checks its configuration when it starts; "sshd -t" first would
# only start it twice.
ExecStartPre=
`

// shutdownLog shows the shutdown on the serial console. The kernel command
// line has "quiet", which keeps the kernel's and systemd's messages off the
// console while booting; at shutdown the console log should still show
// that the guest stopped cleanly (systemd-shutdown's lines).
const shutdownLog = `# Written by microvm (image recipe debian): the kernel command line has
# "quiet"; when the guest shuts down, its console shows the kernel's and
# systemd's messages again, so the console log shows a clean stop.
[Unit]
Description=Show the shutdown on the console
DefaultDependencies=no
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStop=/usr/bin/dmesg --console-level 7

[Install]
WantedBy=multi-user.target
`

// lean applies the lean recipe's changes to a tree made by debootstrap.
func lean(root *os.Root) error {
	for _, g := range leanGenerators {
		if err := replaceSymlink(root, "etc/systemd/system-generators/"+g, "/dev/null"); err != nil {
			return err
		}
	}
	for _, u := range leanMasked {
		if err := replaceSymlink(root, "etc/systemd/system/"+u, "/dev/null"); err != nil {
			return err
		}
	}
	wants, err := fs.Glob(root.FS(), "etc/systemd/system/*.wants")
	if err != nil {
		return err
	}
	for _, dir := range wants {
		for _, u := range leanDisabled {
			if err := removeIfExists(root, path.Join(dir, u)); err != nil {
				return err
			}
		}
	}
	for _, name := range leanRemoved {
		if err := removeIfExists(root, name); err != nil {
			return err
		}
	}
	for _, f := range leanFiles {
		if target, ok := strings.CutPrefix(f.text, "-> "); ok {
			err = replaceSymlink(root, f.name, target)
		} else {
			err = replaceFile(root, f.name, f.text)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// replaceSymlink makes name a symlink to target, replacing what was there.
func replaceSymlink(root *os.Root, name, target string) error {
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := removeIfExists(root, name); err != nil {
		return err
	}
	return root.Symlink(target, name)
}

// replaceFile writes text to name, replacing (not following) what was there.
func replaceFile(root *os.Root, name, text string) error {
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := removeIfExists(root, name); err != nil {
		return err
	}
	return root.WriteFile(name, []byte(text), 0o644)
}
