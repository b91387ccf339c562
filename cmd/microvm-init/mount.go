package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mount is one mount(2) call.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func (m mount) String() string {
	return fmt.Sprintf("%s %s on %s", m.fstype, m.source, m.target)
}

// kernelFS are the kernel's filesystems the init mounts first, and moves
// into the new root at the end. The flags are the ones systemd would give
// them (it keeps mounts it finds).
var kernelFS = []mount{
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// Tags of the virtiofs shares (virtiofs.TagImage, TagEtc and TagVar): the
// VMM gives each VM these three.
const (
	tagImage = "image"
	tagEtc   = "etc"
	tagVar   = "var"
)

// shareMounts returns the mounts that make the new root at root, in the
// order they must be made: the image first, read-only (unless it is the
// VM's own writable overlay: rw), then the VM's own /etc and /var on top
// of it.
func shareMounts(root string, rw bool) []mount {
	var flags uintptr = unix.MS_RDONLY
	if rw {
		flags = 0
	}
	return []mount{
		{tagImage, root, "virtiofs", flags, ""},
		{tagEtc, root + "/etc", "virtiofs", 0, ""},
		{tagVar, root + "/var", "virtiofs", 0, ""},
	}
}

func mountKernelFS() error {
	for _, m := range kernelFS {
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s: %w", m, err)
		}
	}
	return nil
}

// shareWait is how long a share may take to appear after the modules are
// loaded.
const shareWait = 5 * time.Second

// mountShares mounts the shares of [shareMounts] on root.
//
// A virtio device is probed when its driver registers, which is usually
// before finit_module returns, but the driver core may probe
// asynchronously: for a moment after the modules are loaded, virtiofs
// may not be registered yet (ENODEV) or may not know the tag yet (the
// kernel says EINVAL, "virtio-fs: tag <image> not found"). Those errors
// are retried for a few seconds; a share the VMM never gave stays
// missing, and fails then.
func mountShares(root string, rw bool) error {
	deadline := time.Now().Add(shareWait)
	for _, m := range shareMounts(root, rw) {
		// A missing mount point would look like the retried ENOENT.
		if fi, err := os.Stat(m.target); err != nil || !fi.IsDir() {
			return fmt.Errorf("mounting %s: no directory %s to mount on (every image has /etc and /var)", m, m.target)
		}
		for {
			err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
			if err == nil {
				break
			}
			retry := err == unix.ENODEV || err == unix.EINVAL || err == unix.ENOENT
			if retry && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if err == unix.EINVAL {
				return fmt.Errorf("mounting %s: %w (no virtiofs device is tagged %s)", m, err, m.source)
			}
			return fmt.Errorf("mounting %s: %w", m, err)
		}
	}
	return nil
}

// switchRoot makes root the root of the system and execs init in it, as
// switch_root(8) does. It returns only on failure.
func switchRoot(root, init string) error {
	// The kernel's filesystems stay mounted: the image's init uses them
	// as they are. The mount points are the image's own directories.
	for _, m := range kernelFS {
		if err := unix.Mount(m.target, root+m.target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s to %s: %w", m.target, root+m.target, err)
		}
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	// After the move below nothing can reach the initramfs's files, and
	// the memory they take (the initramfs is RAM) would be lost for good.
	// Failing to delete them costs memory, not the boot.
	if freed, err := freeInitramfs(root); err != nil {
		logf("freeing the initramfs: %v (continuing)", err)
	} else {
		logf("freed the initramfs (%d KiB)", freed/1024)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	// systemd reads its settings from /proc/cmdline, not from argv. The
	// kernel's environment for init (HOME, TERM) is passed on.
	err := unix.Exec(init, []string{init}, os.Environ())
	return fmt.Errorf("executing %s: %w", init, err)
}

// freeInitramfs deletes every file of the initramfs but the mount point
// keep, and returns how many bytes the files held. It deletes only on the
// filesystem of /, and only if that is the initramfs (ramfs or tmpfs): a
// mount point on the way is another filesystem and is left alone.
func freeInitramfs(keep string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/", &fs); err != nil {
		return 0, err
	}
	if fs.Type != unix.RAMFS_MAGIC && fs.Type != unix.TMPFS_MAGIC {
		return 0, fmt.Errorf("/ is not an initramfs (filesystem type %#x)", fs.Type)
	}
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		return 0, err
	}
	return removeContents("/", st.Dev, keep)
}

// removeContents deletes what dir holds on the device dev, except keep.
func removeContents(dir string, dev uint64, keep string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var freed int64
	var errs []error
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			errs = append(errs, err)
			continue
		}
		if path == keep || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			n, err := removeContents(path, dev, keep)
			freed += n
			if err != nil {
				errs = append(errs, err)
				continue
			}
			err = unix.Rmdir(path)
			if err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
			}
			continue
		}
		if err := unix.Unlink(path); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
			continue
		}
		freed += st.Size
	}
	if len(errs) > 0 {
		return freed, joinErrors(errs) // on one line: it goes to the console
	}
	return freed, nil
}

// volumeWait is how long a volume's block device may take to appear.
const volumeWait = 5 * time.Second

// mountVolume mounts the virtio block device whose serial is v.name
// (/sys/block/vdX/serial; devtmpfs makes /dev/vdX) at v.dir in the new
// root, making the directory, which is in the VM's own /var (the image is
// read-only).
func mountVolume(root string, v volume) (string, error) {
	deadline := time.Now().Add(volumeWait)
	for {
		blocks, _ := filepath.Glob("/sys/block/vd*")
		for _, b := range blocks {
			serial, err := os.ReadFile(b + "/serial")
			if err != nil || strings.TrimSpace(string(serial)) != v.name {
				continue
			}
			dev := "/dev/" + filepath.Base(b)
			target := root + v.dir
			if err := os.MkdirAll(target, 0o755); err != nil {
				return "", fmt.Errorf("making the mount point of volume %s: %w", v.name, err)
			}
			if err := unix.Mount(dev, target, "ext4", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
				return "", fmt.Errorf("mounting volume %s (%s) at %s: %w", v.name, dev, v.dir, err)
			}
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("volume %s: no block device with that serial (is virtio_blk loaded?)", v.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
