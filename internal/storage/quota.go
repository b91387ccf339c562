package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// A VM's disk (config.Limits.DiskBytes) is bounded, with storage = "dir",
// by a project quota where state_dir's filesystem has them on: ext4 made
// (or tuned) with the project and quota features and mounted with
// prjquota, or XFS mounted with prjquota. The VM's state directory
// carries its project ID (config.VM.ProjectID) with the inherit flag, so
// whatever is made below it, by the program or by the guest through
// virtiofsd, counts in the project; the project has a hard limit of
// blocks, and of inodes (one per InodeBytes of disk, as mkfs.ext4
// provisions them, so that a guest cannot take the host's inodes
// either). The kernel then answers a write past it with EDQUOT, which
// the guest sees as "Disk quota exceeded", whoever writes: virtiofsd
// drops CAP_SYS_RESOURCE, which alone lets a process past a quota.
//
// Everything here is system calls: FS_IOC_FSGETXATTR/FSSETXATTR for the
// project ID, quotactl_fd(2) (Linux 5.14) for the limits, as chattr -p
// and setquota -P do.

// InodeBytes is how much disk one inode of a project's inode limit
// stands for: mkfs.ext4's default bytes-per-inode.
const InodeBytes = 16 << 10

// ioctl numbers and flags of linux/fs.h.
const (
	fsIOCFSGetXattr  = 0x801c581f // _IOR('X', 31, struct fsxattr)
	fsIOCFSSetXattr  = 0x401c5820 // _IOW('X', 32, struct fsxattr)
	xflagProjInherit = 0x00000200 // FS_XFLAG_PROJINHERIT
)

// fsxattr is struct fsxattr.
type fsxattr struct {
	Xflags, Extsize, Nextents, Projid, Cowextsize uint32
	Pad                                           [8]byte
}

// quotactl commands of linux/quota.h and linux/dqblk_xfs.h.
const (
	qGetQuota    = 0x800007
	qSetQuota    = 0x800008
	qXGetQStatV  = 'X'<<8 + 8 // Q_XGETQSTATV
	prjQuota     = 2          // PRJQUOTA
	qifBLimits   = 1
	qifILimits   = 4
	qstatVersion = 1      // FS_QSTATV_VERSION1
	pdqEnforced  = 1 << 5 // FS_QUOTA_PDQ_ENFD
	pdqAccounted = 1 << 4 // FS_QUOTA_PDQ_ACCT
)

// dqblk is struct if_dqblk: limits in 1 KiB blocks, use in bytes.
type dqblk struct {
	BHardlimit, BSoftlimit, CurSpace  uint64
	IHardlimit, ISoftlimit, CurInodes uint64
	BTime, ITime                      uint64
	Valid                             uint32
	_                                 uint32
}

func quotactl(fd int, cmd, id uintptr, addr unsafe.Pointer) error {
	_, _, e := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(fd), cmd<<8|prjQuota, id, uintptr(addr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// projectQuotas says whether the filesystem of fd enforces project
// quotas; when it does not, why, for a person.
func projectQuotas(fd int) (bool, string) {
	var st unix.Statfs_t
	fs := "its filesystem"
	if unix.Fstatfs(fd, &st) == nil {
		fs = fsName(st.Type)
	}
	var buf [256]byte // struct fs_quota_statv, with room to spare
	buf[0] = qstatVersion
	err := quotactl(fd, qXGetQStatV, 0, unsafe.Pointer(&buf[0]))
	flags := uint16(buf[2]) | uint16(buf[3])<<8
	switch {
	case err == nil && flags&pdqEnforced != 0:
		return true, ""
	case err == nil && flags&pdqAccounted != 0:
		return false, fs + " counts project quotas but does not enforce them (mount it with -o prjquota)"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return false, "ext4 without project quotas (unmounted: tune2fs -O project,quota DEVICE; then mount it with -o prjquota)"
	case unix.XFS_SUPER_MAGIC:
		return false, "XFS without project quotas (mount it with -o prjquota)"
	}
	return false, fs + ", which has no project quotas here (they need ext4 or XFS mounted with -o prjquota, or storage = \"zfs\")"
}

func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "XFS"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.FUSE_SUPER_MAGIC:
		return "a FUSE filesystem"
	case 0x2fc12fc1:
		return "ZFS"
	}
	return fmt.Sprintf("a filesystem of type %#x", magic)
}

// QuotaCheck says whether disk limits can be enforced in state_dir with
// storage = "dir": "" if they can, otherwise what to do, for a warning.
// It reads state_dir, or the nearest directory above it that exists.
func QuotaCheck(h config.Host) string {
	dir := h.StateDir
	for {
		f, err := os.Open(dir)
		if err == nil {
			defer f.Close()
			if ok, why := projectQuotas(int(f.Fd())); !ok {
				return fmt.Sprintf("%s is on %s", h.StateDir, why)
			}
			return ""
		}
		if dir == "/" {
			return fmt.Sprintf("%s cannot be read: %v", h.StateDir, err)
		}
		dir = filepath.Dir(dir)
	}
}

// ProjectQuota gives a VM's state directory its project and the
// project its limits: the action of the dir backend, in plan and at each
// start of the VM.
type ProjectQuota struct {
	VM *config.VM
}

func (a *ProjectQuota) limits() (blocks, inodes uint64) {
	b := a.VM.DiskQuota()
	return uint64(b >> 10), uint64(b / InodeBytes)
}

func (a *ProjectQuota) String() string {
	_, inodes := a.limits()
	id := a.VM.ProjectID()
	fs := a.VM.StateDir
	if m, err := mountOf(a.VM.StateDir); err == nil {
		fs = m
	}
	return fmt.Sprintf("chattr -R -p %d +P %s && setquota -P %d 0 %s 0 %d %s   # %s's disk",
		id, a.VM.StateDir, id, config.FormatSize(a.VM.DiskQuota()), inodes, fs, a.VM.Name)
}

// Apply sets the project ID on the state directory and everything in it
// that is not in the project yet (a VM's data from before), the
// directory itself last, so that one interrupted is done again; then
// the project's limits.
func (a *ProjectQuota) Apply() error {
	fd, err := openState(a.VM)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return a.apply(fd)
}

// openState opens vm's state directory, root's alone, for the ioctls and
// quotactls on it (a descriptor of safedir's may be O_PATH, which they
// do not take), checking that it is the directory safedir vouched for.
func openState(vm *config.VM) (int, error) {
	d, err := safedir.OpenPrivate(vm.StateDir)
	if err != nil {
		return -1, err
	}
	defer d.Close()
	want, err := d.Stat()
	if err != nil {
		return -1, err
	}
	fd, err := unix.Open(vm.StateDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", vm.StateDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != want.Ino || st.Dev != want.Dev {
		unix.Close(fd)
		return -1, fmt.Errorf("opening %s: it changed while it was opened", vm.StateDir)
	}
	return fd, nil
}

func (a *ProjectQuota) apply(fd int) error {
	id := a.VM.ProjectID()
	x, err := getXattr(fd)
	if err != nil {
		return fmt.Errorf("reading the project of %s: %w", a.VM.StateDir, err)
	}
	if x.Projid != id || x.Xflags&xflagProjInherit == 0 {
		if err := setTree(fd, id); err != nil {
			return fmt.Errorf("setting project %d on %s: %w", id, a.VM.StateDir, err)
		}
	}
	blocks, inodes := a.limits()
	q := dqblk{BHardlimit: blocks, IHardlimit: inodes, Valid: qifBLimits | qifILimits}
	if err := quotactl(fd, qSetQuota, uintptr(id), unsafe.Pointer(&q)); err != nil {
		return fmt.Errorf("setting the quota of project %d (%s): %w", id, a.VM.StateDir, err)
	}
	return nil
}

// inPlace reports whether fd's directory has the project and its limits.
func (a *ProjectQuota) inPlace(fd int) (bool, error) {
	x, err := getXattr(fd)
	if err != nil {
		return false, err
	}
	q, err := getQuota(fd, a.VM.ProjectID())
	if err != nil {
		return false, err
	}
	blocks, inodes := a.limits()
	return x.Projid == a.VM.ProjectID() && x.Xflags&xflagProjInherit != 0 && q.BHardlimit == blocks && q.IHardlimit == inodes, nil
}

func getQuota(fd int, id uint32) (dqblk, error) {
	var q dqblk
	err := quotactl(fd, qGetQuota, uintptr(id), unsafe.Pointer(&q))
	return q, err
}

func getXattr(fd int) (fsxattr, error) {
	var x fsxattr
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIOCFSGetXattr, uintptr(unsafe.Pointer(&x)))
	if e != 0 {
		return x, e
	}
	return x, nil
}

// setProject puts fd's file in project id; a directory also passes it on
// to what is made in it.
func setProject(fd int, id uint32, dir bool) error {
	x, err := getXattr(fd)
	if err != nil {
		return err
	}
	x.Projid = id
	if dir {
		x.Xflags |= xflagProjInherit
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIOCFSSetXattr, uintptr(unsafe.Pointer(&x)))
	if e != 0 {
		return e
	}
	return nil
}

// setTree puts the directory fd and everything below it in project id,
// depth first, the directory last. It opens only directories and regular
// files, never following a symlink (a guest made them), and checks that
// what it opened is what it listed; the rest (symlinks, device nodes,
// FIFOs, sockets) keeps its project: it takes no blocks to speak of.
func setTree(fd int, id uint32) error {
	names, err := dirNames(fd)
	if err != nil {
		return err
	}
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return err
		}
		mode := st.Mode & unix.S_IFMT
		if mode != unix.S_IFDIR && mode != unix.S_IFREG {
			continue
		}
		flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
		if mode == unix.S_IFDIR {
			flags |= unix.O_DIRECTORY
		}
		child, err := unix.Openat(fd, name, flags, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", name, err)
		}
		var cst unix.Stat_t
		err = unix.Fstat(child, &cst)
		if err == nil && (cst.Ino != st.Ino || cst.Dev != st.Dev || cst.Mode&unix.S_IFMT != mode) {
			err = fmt.Errorf("%s changed while it was read", name)
		}
		if err == nil && mode == unix.S_IFDIR {
			err = setTree(child, id)
		} else if err == nil {
			err = setProject(child, id, false)
		}
		unix.Close(child)
		if err != nil {
			return err
		}
	}
	return setProject(fd, id, true)
}

// dirNames lists the directory fd, without moving its own offset.
func dirNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// mountOf is the mount point dir is under.
func mountOf(dir string) (string, error) {
	points, err := mountinfo.Points()
	if err != nil {
		return "", err
	}
	best := "/"
	for _, p := range points {
		if (dir == p || strings.HasPrefix(dir, strings.TrimSuffix(p, "/")+"/")) && len(p) > len(best) {
			best = p
		}
	}
	return best, nil
}

// BoundDisk gives vm's data its disk limit before it starts, where the
// storage does so per start (storage = "dir": its project quota); with
// ZFS the host part has set the dataset's refquota. It returns what the
// supervisor logs: the limit set. Where it cannot be enforced it sets
// nothing and says nothing: the host part's warning (plan, and the
// supervisor's log) says why.
func BoundDisk(h config.Host, vm *config.VM) (string, error) {
	if h.Storage != config.StorageDir {
		return "", nil
	}
	fd, err := openState(vm)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if ok, _ := projectQuotas(fd); !ok {
		return "", nil
	}
	a := &ProjectQuota{VM: vm}
	if ok, err := a.inPlace(fd); err == nil && ok {
		return fmt.Sprintf("disk: %s, project quota %d", config.FormatSize(vm.DiskQuota()), vm.ProjectID()), nil
	}
	if err := a.apply(fd); err != nil {
		return "", err
	}
	return fmt.Sprintf("disk: %s, project quota %d set", config.FormatSize(vm.DiskQuota()), vm.ProjectID()), nil
}

// DiskUse is what vm's data holds against its disk limit: with ZFS its
// dataset's referenced and refquota, with plain directories its project's
// use and limit. A limit of 0 is none enforced.
func DiskUse(h config.Host, vm *config.VM) (used, limit int64, err error) {
	if h.Storage == config.StorageZFS {
		return (&ZFS{Host: h}).Quota(vm)
	}
	fd, err := openState(vm)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	if ok, _ := projectQuotas(fd); !ok {
		n, err := DiskUsage(vm.StateDir)
		return n, 0, err
	}
	q, err := getQuota(fd, vm.ProjectID())
	if err != nil {
		return 0, 0, fmt.Errorf("reading the quota of %s: %w", vm.Name, err)
	}
	return int64(q.CurSpace), int64(q.BHardlimit) << 10, nil
}
