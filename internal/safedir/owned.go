package safedir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// What the host writes into a guest's trees on its behalf (package guest:
// the files infra.toml declares, the units it enables, what an image adds
// to /etc and /var) belongs to the guest's users, with the modes it says.
// Each is made aside under a new name, given its owner and mode through
// its own descriptor, and only then renamed into place: the guest never
// sees it with another owner or mode, and nothing is changed by a name it
// could have swapped meanwhile.

// WriteFileOwned is WriteFile with the file owned by uid:gid, and perm's
// setuid, setgid and sticky bits kept. A file that already holds data,
// with mode perm and that owner, is left alone.
func (d *Dir) WriteFileOwned(name string, data []byte, perm fs.FileMode, uid, gid int) error {
	return d.write(name, data, perm, uid, gid)
}

// write replaces name with data, mode perm and, unless uid is -1, owner
// uid:gid, both set through the temporary file's descriptor before the
// rename. A file that already is all that is left alone.
func (d *Dir) write(name string, data []byte, perm fs.FileMode, uid, gid int) error {
	if st, err := d.Lstat(name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o7777 == unixMode(perm) &&
		(uid < 0 || int(st.Uid) == uid && int(st.Gid) == gid) && st.Size == int64(len(data)) {
		if old, err := d.ReadFile(name); err == nil && bytes.Equal(old, data) {
			return nil
		}
	}
	return d.copy(name, bytes.NewReader(data), perm, uid, gid)
}

// CopyOwned replaces name beneath d with a regular file holding what r
// gives, owned by uid:gid with mode perm: a file of any size, copied
// rather than held in memory.
func (d *Dir) CopyOwned(name string, r io.Reader, perm fs.FileMode, uid, gid int) error {
	return d.copy(name, r, perm, uid, gid)
}

// copy writes what r gives to a new file beside name, gives it mode perm
// and (unless uid is -1) owner uid:gid through its descriptor, syncs it,
// and renames it over name.
func (d *Dir) copy(name string, r io.Reader, perm fs.FileMode, uid, gid int) error {
	parent, base, err := d.parent(name)
	if err != nil {
		return err
	}
	defer closeIfNot(parent, d)
	for {
		tmp := "." + base + ".tmp-" + rand.Text()[:8]
		fd, err := unix.Openat(parent.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return d.err("create", name, err)
		}
		f := os.NewFile(uintptr(fd), parent.join(tmp))
		_, err = io.Copy(f, r)
		// chown clears the setuid and setgid bits: the mode comes after.
		if err == nil && uid >= 0 {
			err = unix.Fchown(fd, uid, gid)
		}
		if err == nil {
			err = unix.Fchmod(fd, unixMode(perm)) // whatever the umask
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = unix.Renameat(parent.fd, tmp, parent.fd, base)
		}
		if err != nil {
			_ = unix.Unlinkat(parent.fd, tmp, 0) // our temporary; err is the one to report
			return d.err("write", name, err)
		}
		return nil
	}
}

// unixMode is perm as chmod(2) takes it, with the setuid, setgid and
// sticky bits.
func unixMode(perm fs.FileMode) uint32 {
	m := uint32(perm.Perm())
	if perm&fs.ModeSetuid != 0 {
		m |= unix.S_ISUID
	}
	if perm&fs.ModeSetgid != 0 {
		m |= unix.S_ISGID
	}
	if perm&fs.ModeSticky != 0 {
		m |= unix.S_ISVTX
	}
	return m
}

// Symlink makes name beneath d a symlink to target owned by uid:gid,
// replacing what is there unless it is a directory; the same symlink is
// left alone. The link is made aside, given its owner through an O_PATH
// descriptor of it, and renamed into place.
func (d *Dir) Symlink(target, name string, uid, gid int) error {
	if got, err := d.Readlink(name); err == nil && got == target {
		if st, err := d.Lstat(name); err == nil && int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
	}
	parent, base, err := d.parent(name)
	if err != nil {
		return err
	}
	defer closeIfNot(parent, d)
	for {
		tmp := "." + base + ".tmp-" + rand.Text()[:8]
		err := unix.Symlinkat(target, parent.fd, tmp)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err == nil {
			err = chownLink(parent.fd, tmp, uid, gid)
		}
		if err == nil {
			err = unix.Renameat(parent.fd, tmp, parent.fd, base)
		}
		if err != nil {
			_ = unix.Unlinkat(parent.fd, tmp, 0) // ours, if made; err is the one to report
			return d.err("symlink", name, err)
		}
		return nil
	}
}

// chownLink gives the symlink name in dir owner uid:gid, through an O_PATH
// descriptor of it: if the name is no longer a symlink, nothing changes.
func chownLink(dir int, name string, uid, gid int) error {
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return errors.New("replaced while it was made")
	}
	return unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
}

// Readlink returns the target of the symlink name beneath d.
func (d *Dir) Readlink(name string) (string, error) {
	parent, base, err := d.parent(name)
	if err != nil {
		return "", err
	}
	defer closeIfNot(parent, d)
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(parent.fd, base, buf)
	if err != nil {
		return "", d.err("readlink", name, err)
	}
	return string(buf[:n]), nil
}

// MkdirOwned makes the directory name beneath d (its parent must exist)
// with mode perm, owned by uid:gid, or gives an existing one that mode and
// owner, through its descriptor. Anything else at name (a symlink, a FIFO)
// is an error, and is not opened.
func (d *Dir) MkdirOwned(name string, perm fs.FileMode, uid, gid int) error {
	parent, base, err := d.parent(name)
	if err != nil {
		return err
	}
	defer closeIfNot(parent, d)
	if err := unix.Mkdirat(parent.fd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return d.err("mkdir", name, err)
	}
	sub, err := parent.OpenDir(base)
	if err != nil {
		return err
	}
	defer sub.Close()
	fd, err := sub.reopen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return d.err("chown", name, err)
	}
	return d.err("chmod", name, unix.Fchmod(fd, unixMode(perm)))
}

// NamesUpTo returns the names in d, unsorted, or an error if it has more
// than max: a guest's directory can hold millions.
func (d *Dir) NamesUpTo(max int) ([]string, error) {
	fd, err := d.reopen()
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	var names []string
	for {
		batch, err := f.Readdirnames(256)
		names = append(names, batch...)
		if len(names) > max {
			return nil, d.err("readdir", "", errTooMany)
		}
		if err == io.EOF {
			return names, nil
		}
		if err != nil {
			return nil, d.err("readdir", "", err)
		}
	}
}

var errTooMany = errors.New("too many entries")
