// Package volume keeps a VM's volumes ([vm.NAME.volumes]): block devices
// of its own, for what wants a disk rather than a shared directory.
//
// A volume is a sparse file in the VM's state, STATE_DIR/NAME/volumes/
// NAME.img: root's directory, where the guest never sees a name, and with
// storage = "zfs" inside the VM's dataset, so that its snapshots and
// rollbacks take the volumes along with /etc and /var (one `zfs snapshot`
// is one moment of all of them; a zvol would need its own, and zfs-fuse,
// on which the tests run ZFS, has none). The file belongs to the VM's
// user, who is the only one to write it: its VMM gets it as a descriptor
// and opens it through /proc/self/fd.
//
// The host formats a volume once, when it makes it (mkfs.ext4 on a new,
// empty file: nothing a guest wrote is ever parsed by the host), and never
// mounts or reads it after that. A larger size grows the file at the next
// start, and the guest grows its filesystem (resize2fs, online, in a unit
// package guest writes); a smaller one is refused: shrinking would cut
// the guest's data.
package volume

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Open is a volume ready for the VMM.
type Open struct {
	Name string
	File *os.File
}

// Prepare makes each of vm's volumes that is missing (sparse, formatted,
// the file owned by uid:gid, the VMM's user, and its filesystem's root by
// the guest's owner, which owner resolves), grows one whose size grew, and
// opens them all for its VMM. It says what it did through logf.
func Prepare(vm *config.VM, uid, gid int, owner func(user, group string) (int, int, error), logf func(string, ...any)) (vols []Open, err error) {
	defer func() {
		if err != nil {
			Close(vols)
			vols = nil
		}
	}()
	if len(vm.Volumes) == 0 {
		return nil, nil
	}
	dir := filepath.Dir(vm.VolumeFile("x"))
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("making %s: %w", dir, err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		return nil, fmt.Errorf("%s is not root's directory", dir)
	}
	for _, v := range vm.Volumes {
		path := vm.VolumeFile(v.Name)
		f, made, err := openOrMake(path, v.Size, uid, gid)
		if err != nil {
			return vols, fmt.Errorf("%s: volume %s: %w", v.At, v.Name, err)
		}
		vols = append(vols, Open{v.Name, f})
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return vols, err
		}
		switch {
		case made:
			// Formatted under a temporary name: a volume is at its
			// name only once it has a filesystem, so a start cut short
			// here leaves nothing a later one would take for a volume.
			tmp := path + ".new"
			ou, og, err := owner(v.Owner, v.Group)
			if err == nil {
				err = mkfs(tmp, v, ou, og)
			}
			if err == nil {
				err = os.Rename(tmp, path)
			}
			if err != nil {
				os.Remove(tmp)
				return vols, fmt.Errorf("%s: volume %s: %w", v.At, v.Name, err)
			}
			logf("volume %s made: %s, %s, formatted %s", v.Name, path, size(v.Size), v.FS)
		case st.Size > v.Size:
			return vols, fmt.Errorf("%s: volume %s is %s, larger than its size %s; a volume does not shrink (its data would be cut): give it %s or more", v.At, v.Name, size(st.Size), size(v.Size), size(st.Size))
		case st.Size < v.Size:
			if err := f.Truncate(v.Size); err != nil {
				return vols, fmt.Errorf("growing volume %s: %w", v.Name, err)
			}
			logf("volume %s grown from %s to %s; the guest grows its filesystem as it boots", v.Name, size(st.Size), size(v.Size))
		}
	}
	return vols, nil
}

// openOrMake opens the volume file at path for reading and writing, or,
// if it is missing, makes one at path.new (sparse, of size bytes, owned by
// uid:gid) for Prepare to format and move to path.
// Nothing but a regular file of the VM's user is opened.
func openOrMake(path string, size int64, uid, gid int) (f *os.File, made bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		tmp := path + ".new"
		os.Remove(tmp) // what a start cut short left
		f, err = os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, false, err
		}
		if err := f.Truncate(size); err == nil {
			err = f.Chown(uid, gid)
		}
		if err != nil {
			f.Close()
			os.Remove(tmp)
			return nil, false, err
		}
		return f, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, false, fmt.Errorf("%s is not a regular file", path)
	}
	if int(st.Uid) != uid {
		if err := f.Chown(uid, gid); err != nil { // the VM's user was made again
			f.Close()
			return nil, false, err
		}
	}
	return f, false, nil
}

// mkfs formats a new volume: a file no guest has written yet.
func mkfs(path string, v config.Volume, uid, gid int) error {
	out, err := exec.Command("mkfs.ext4", "-F", "-q", "-L", v.Name,
		"-E", fmt.Sprintf("lazy_itable_init=1,lazy_journal_init=1,root_owner=%d:%d", uid, gid), path).CombinedOutput()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return errors.New("formatting a volume needs mkfs.ext4: apt-get install e2fsprogs")
		}
		return fmt.Errorf("mkfs.ext4 %s: %s: %w", path, strings.TrimSpace(string(out)), err)
	}
	return nil
}

// Close closes what Prepare opened.
func Close(vols []Open) {
	for _, v := range vols {
		v.File.Close()
	}
}

// Usage is a volume's size and what it takes on disk.
type Usage struct {
	Name      string
	Size      int64 // the file's size: the device's
	Allocated int64 // its blocks on disk (it is sparse)
}

// Of reads the use of vm's volumes (those made so far).
func Of(vm *config.VM) []Usage {
	var out []Usage
	for _, v := range vm.Volumes {
		var st unix.Stat_t
		if err := unix.Lstat(vm.VolumeFile(v.Name), &st); err == nil {
			out = append(out, Usage{v.Name, st.Size, st.Blocks * 512})
		}
	}
	return out
}

func size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
