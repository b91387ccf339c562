// Package virtiofs runs the virtiofs daemons that give each guest its
// filesystems: one virtiofsd process per share, each listening on its own
// vhost-user socket that the VMM connects to.
//
// Every VM has three shares, with fixed tags that the guest's init mounts:
//
//	image  the shared root filesystem of the VM's image, read-only
//	etc    the VM's own /etc (STATE_DIR/NAME/etc), writable
//	var    the VM's own /var (STATE_DIR/NAME/var), writable
//
// Two daemons exist and [Find] picks the installed one: the Rust virtiofsd
// that current distributions ship (--shared-dir, --readonly), and the older C
// virtiofsd that Debian 12 ships with QEMU 7.2 (-o source=), which has no
// read-only option.
//
// # How the image stays read-only
//
// A guest's root may remount the image share read-write; only the host can
// refuse the writes. The decision: the image share does not serve the
// image's rootfs directory itself but a read-only bind mount of it,
// [config.Host.ImageView] (RUN_DIR/images/IMAGE), made by the host part of the
// program with the [ReadOnlyView] action:
//
//	mount --bind -o ro STATE_DIR/images/IMAGE/rootfs RUN_DIR/images/IMAGE
//
// The kernel then answers every write through that mount with EROFS, whichever
// daemon serves it and whatever the guest asks: the C daemon passes the error
// on, and the Rust daemon is additionally started with --readonly where it has
// it (virtiofsd 1.13 and newer). The daemon's jail keeps the flag: a
// bind mount copies it, and so does the mount namespace the jail creates.
// [Start] refuses to serve a read-only share from a directory that is not on
// a read-only mount, so a missing mount fails closed instead of handing the
// guests a writable image.
//
// Why not the alternatives: file permissions do not stop the daemon, which
// runs as root; a read-only bind made in each daemon's own jail would hide
// the guarantee from the host's view; and one mount per image, shared by
// all its VMs, is the easiest to see (`findmnt RUN_DIR/images/IMAGE`).
//
// # How a daemon is confined
//
// Each daemon runs in a jail (package jail, as the VMM does; see
// Daemon.Jail): its own mount, PID, network and IPC namespaces, a root
// holding only its program's directories, its shared directory and a few
// device nodes, and a bounding set of only JailCaps; the supervisor makes
// its socket and hands it the listening descriptor. Inside, the daemon's
// own sandbox (chroot into the shared directory, its seccomp filter, its
// capabilities cut to Caps) applies once its VMM connects. The mount
// lives in RUN_DIR, so it disappears at reboot with the sockets and is made
// again by the next start.
package virtiofs

import (
	"fmt"
	"slices"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Tags of the three shares every VM has. The guest's init mounts them by
// these names: image on the new root, etc on /etc, var on /var.
const (
	TagImage = "image"
	TagEtc   = "etc"
	TagVar   = "var"
	// TagSecrets is the fourth share of a VM with secrets: the guest
	// mounts it at /run/credentials/microvm (package secret).
	TagSecrets = "secrets"
)

// Share is one directory given to one guest.
type Share struct {
	Tag      string // what the guest mounts it by
	Dir      string // the host directory the daemon serves
	Socket   string // the vhost-user socket the VMM connects to
	Group    string // group allowed to connect to Socket: the VM's own group (config.VM.User)
	ReadOnly bool   // the guest must not change anything in Dir
	// JailDir is the empty directory of root's that the daemon's jail is
	// built on (package jail; the VMM's, config.VM.JailDir, serves).
	JailDir string
}

// Shares returns vm's shares, in the order image, etc, var (and secrets,
// when it has any), for vm
// booting the image in the directory imageDir. With image_writable, the
// image share is the VM's own overlay over that image, read-write.
func Shares(h config.Host, vm *config.VM, imageDir string) []Share {
	img := Share{Tag: TagImage, Dir: h.ImageView(imageDir), Socket: vm.ShareSocket(TagImage), Group: vm.User, ReadOnly: true, JailDir: vm.JailDir()}
	if vm.ImageWritable {
		img.Dir, img.ReadOnly = vm.RootView(), false
	}
	shares := []Share{
		img,
		{Tag: TagEtc, Dir: vm.EtcDir, Socket: vm.ShareSocket(TagEtc), Group: vm.User, JailDir: vm.JailDir()},
		{Tag: TagVar, Dir: vm.VarDir, Socket: vm.ShareSocket(TagVar), Group: vm.User, JailDir: vm.JailDir()},
	}
	if len(vm.Secrets) > 0 {
		// A tmpfs of the VM's own (package secret), read-only.
		shares = append(shares, Share{Tag: TagSecrets, Dir: vm.SecretsShare(), Socket: vm.ShareSocket(TagSecrets), Group: vm.User, ReadOnly: true, JailDir: vm.JailDir()})
	}
	return shares
}

// Flavour is which implementation of virtiofsd a binary is.
type Flavour string

const (
	Rust Flavour = "rust" // gitlab.com/virtio-fs/virtiofsd, packaged as "virtiofsd"
	C    Flavour = "c"    // QEMU's tools/virtiofsd, removed in QEMU 8.0
)

// Daemon is an installed virtiofsd.
type Daemon struct {
	Path     string
	Flavour  Flavour
	Version  string // as the binary reports it, e.g. "1.13.1" or "7.2.22"
	Readonly bool   // it has --readonly (Rust virtiofsd 1.13 and newer)
}

// Args returns the command line that serves s, without the program name.
// The daemon listens on descriptor 3 (ListenFd), a socket the supervisor
// made (see Start).
//
// Both flavours get the same settings: the cache mode (cacheMode); their
// chroot sandbox, in which the daemon chroots into the shared directory so
// that no symlink leads it out (inside its jail, which gives it mount, PID
// and network namespaces of its own: see Start); their seccomp filter
// (always on in the C daemon; --seccomp=kill, the default, written out for
// the Rust one); and only the capabilities the share needs (Caps, as
// --modcaps). Root runs the daemons, which must act as every owner of the
// guest's files (see docs/security.md for what remains, and for an
// unprivileged daemon).
func (d Daemon) Args(s Share) []string {
	fd := fmt.Sprint(ListenFd)
	if d.Flavour == Rust {
		args := []string{
			"--fd=" + fd,
			"--shared-dir=" + s.Dir,
			"--cache=" + cacheMode,
			"--sandbox=chroot",
			"--seccomp=kill",
			"--modcaps=" + Modcaps(s),
			"--rlimit-nofile=0", // the jail sets it (NoFile)
			"--log-level=warn",
		}
		if s.ReadOnly && d.Readonly {
			args = append(args, "--readonly")
		}
		return args
	}
	return []string{
		"--fd=" + fd,
		"-o", "source=" + s.Dir,
		"-o", "cache=" + cacheMode,
		"-o", "sandbox=chroot",
		"-o", "modcaps=" + Modcaps(s),
		"--rlimit-nofile=0", // the jail sets it (NoFile)
		// Its "info" level logs every virtqueue event.
		"-o", "log_level=warn",
	}
}

// ListenFd is the descriptor a daemon is given its listening socket as.
const ListenFd = 3

// defaultCaps are the capabilities both flavours keep by default, to act
// as the owner of any file: what --modcaps changes.
var defaultCaps = []string{"chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod", "setfcap"}

// Caps are the capabilities a share's daemon keeps of defaultCaps:
//
//   - every share drops mknod, so a guest makes no block or character
//     device on the host (FIFOs and sockets need no capability, and still
//     work; device nodes would be inert anyway on the nosuid,nodev mount of
//     STATE_DIR/NAME), and setfcap, which only serves extended attributes,
//     which no share enables;
//   - the read-only image share, which changes nothing, keeps only
//     dac_override, to read what the guest's root may read (setgid and
//     setuid switch the daemon to a guest's ids only to create files).
func Caps(s Share) []string {
	if s.ReadOnly {
		return []string{"dac_override"}
	}
	return []string{"chown", "dac_override", "fowner", "fsetid", "setgid", "setuid"}
}

// Modcaps is Caps in the daemons' --modcaps syntax: what they drop of their
// default capabilities ("-mknod:-setfcap").
func Modcaps(s Share) string {
	keep := Caps(s)
	var drop []string
	for _, c := range defaultCaps {
		if !slices.Contains(keep, c) {
			drop = append(drop, "-"+c)
		}
	}
	return strings.Join(drop, ":")
}

// String describes the daemon for messages, e.g. "C virtiofsd 7.2.22 (/usr/lib/qemu/virtiofsd)".
func (d Daemon) String() string {
	name := "Rust virtiofsd"
	if d.Flavour == C {
		name = "C virtiofsd"
	}
	return fmt.Sprintf("%s %s (%s)", name, d.Version, d.Path)
}

// cacheMode is every share's cache mode: "always", the guest keeps what
// it read for good: a path looked up or a file read once is not asked of
// the daemon again, and every process a guest starts looks up its program
// and libraries. It is right because only the guest changes a share while
// it runs: the image never changes (an image is immutable, and is not
// removed while mounted), and the host writes the VM's own /etc and /var
// (package guest) only before its VMM starts. Under emulation it more than
// halved a boot's time to SSH (docs/guest.md).
const cacheMode = "always"
