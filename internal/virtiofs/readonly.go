package virtiofs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
	mounted, err := isMountPoint(real)
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

// isMountPoint reports whether some mount of this mount namespace is on path
// exactly. It reads /proc/self/mountinfo because a bind mount of a directory
// of the same filesystem cannot be told from a plain directory by stat(2).
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": field 5 is the mount point.
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	return false, s.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) the kernel
// writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
