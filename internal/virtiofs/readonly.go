package virtiofs

import (
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"

	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ReadOnlyView makes Dst a read-only bind mount of Src: the image's rootfs
// as the guests see it (see the package comment for why). nosuid and nodev
// keep the image's setuid programs and device nodes inert on the host; the
// guests are unaffected, their kernels read these bits on their own mounts.
//
// Apply is idempotent: a view that is already in place is left alone, a view
// of a directory that has since been replaced (an image rebuilt) is
// unmounted and made again.
type ReadOnlyView struct{ Src, Dst string }

// viewFlags are the mount flags of a view, as remount sets them.
const viewFlags = unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV

func (a *ReadOnlyView) String() string {
	return fmt.Sprintf("mkdir -p %s && mount --bind -o ro,nosuid,nodev %s %s", a.Dst, a.Src, a.Dst)
}

func (a *ReadOnlyView) Apply() error {
	if a.Src == a.Dst {
		return fmt.Errorf("making read-only view of %s: source and target are the same", a.Src)
	}
	src, err := os.Stat(a.Src)
	if err != nil {
		return fmt.Errorf("making read-only view of %s: %w", a.Src, err)
	}
	if !src.IsDir() {
		return fmt.Errorf("making read-only view of %s: not a directory", a.Src)
	}
	if err := os.MkdirAll(a.Dst, 0o755); err != nil {
		return fmt.Errorf("making read-only view of %s: %w", a.Src, err)
	}
	dst, err := os.Stat(a.Dst)
	if err != nil {
		return fmt.Errorf("making read-only view of %s: %w", a.Src, err)
	}
	// mountinfo shows paths with symbolic links resolved.
	real, err := filepath.EvalSymlinks(a.Dst)
	if err != nil {
		return fmt.Errorf("making read-only view of %s: %w", a.Src, err)
	}
	mounted, err := mountinfo.IsPoint(real)
	if err != nil {
		return fmt.Errorf("making read-only view of %s: %w", a.Src, err)
	}
	// A bind mount's root is the source directory itself: same device, same
	// inode.
	same := os.SameFile(src, dst)
	if mounted && !same {
		if err := unix.Unmount(a.Dst, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting stale view %s: %w", a.Dst, err)
		}
	}
	if !same || !mounted {
		if err := unix.Mount(a.Src, a.Dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s on %s: %w", a.Src, a.Dst, err)
		}
	}
	// A new bind mount takes its source's flags; read-only takes a remount.
	if err := unix.Mount("", a.Dst, "", unix.MS_REMOUNT|viewFlags, ""); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", a.Dst, err)
	}
	return nil
}

// ErrWritable is returned by [CheckReadOnly] for a directory the kernel would
// let the daemon write to.
var ErrWritable = errors.New("not on a read-only mount")

// CheckReadOnly returns nil if dir is on a read-only mount, so that nothing
// served from it can be changed.
func CheckReadOnly(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("checking %s is read-only: %w", dir, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return fmt.Errorf("checking %s is read-only: %w", dir, ErrWritable)
	}
	return nil
}
