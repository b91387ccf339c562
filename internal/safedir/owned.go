package safedir

import (
	"crypto/rand"
	"errors"
	"io/fs"

	"golang.org/x/sys/unix"
)

// What the host writes into a guest's trees on its behalf (package guest:
// the files infra.toml declares, the units it enables, what an image adds
// to /etc and /var) belongs to the guest's users, with the modes it says:
// the owner is set on the temporary file, before it takes the name.

// WriteFileOwned is WriteFile with the file owned by uid:gid. A file that
// already holds data, with mode perm and that owner, is left alone.
func (d *Dir) WriteFileOwned(name string, data []byte, perm fs.FileMode, uid, gid int) error {
	return d.write(name, data, perm, uid, gid)
}

// write replaces name with data, mode perm and, unless uid is -1, owner
// uid:gid, set on the temporary file before the rename.
func (d *Dir) write(name string, data []byte, perm fs.FileMode, uid, gid int) error {
	if st, err := d.Lstat(name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o7777 == unixMode(perm) &&
		(uid < 0 || int(st.Uid) == uid && int(st.Gid) == gid) {
		if old, err := d.ReadFile(name); err == nil && string(old) == string(data) {
			return nil
		}
	}
	parent, base, err := d.parent(name)
	if err != nil {
		return err
	}
	defer closeIfNot(parent, d)
	tmp, err := parent.writeTemp(base, data, perm)
	if err != nil {
		return err
	}
	if uid >= 0 {
		// chown clears the setuid and setgid bits: the mode goes again after.
		err = unix.Fchownat(parent.fd, tmp, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil {
			err = parent.chmodTemp(tmp, perm)
		}
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

// chmodTemp sets the mode of tmp, a file writeTemp made in d, through a
// descriptor.
func (d *Dir) chmodTemp(tmp string, perm fs.FileMode) error {
	fd, err := unix.Openat(d.fd, tmp, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// fchmod refuses an O_PATH descriptor; its /proc link is the same file.
	return unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+itoa(fd), unixMode(perm), 0)
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
// left alone. The link is made aside and renamed into place.
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
			err = unix.Fchownat(parent.fd, tmp, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
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
// owner, through its descriptor.
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
	if err := sub.Chown(uid, gid); err != nil {
		return err
	}
	fd, err := sub.reopen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return sub.err("chmod", "", unix.Fchmod(fd, unixMode(perm)))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for ; n > 0; n /= 10 {
		i--
		b[i] = byte('0' + n%10)
	}
	return string(b[i:])
}
