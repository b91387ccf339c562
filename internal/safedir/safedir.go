// Package safedir reads and writes files in directory trees that someone
// other than root can change: a VM's /etc and /var (guest root writes them
// through virtiofsd, and can put any symlink, hard link, FIFO or device
// node there) and a VMM's run directory (the VMM's user writes it).
//
// A [Dir] is an open directory. Every name given to its methods is resolved
// beneath it by the kernel, with openat2(2) and RESOLVE_BENEATH,
// RESOLVE_NO_SYMLINKS and RESOLVE_NO_MAGICLINKS: no component may be a
// symlink, not even one that stays inside the tree (Go's os.Root follows
// those), and nothing resolves outside. Files are opened only if they are
// regular files, without blocking and without following anything; they are
// written to a temporary file in the same directory and renamed over the
// name (a rename replaces a symlink, it never writes through one); modes
// and owners are changed through descriptors (fchmod, fchown), never by
// path. So whatever the tree holds, the host reads and writes only inside
// it, and only the files it names.
//
// The directory a Dir is opened on is trusted as a path: it is one root
// made (STATE_DIR/NAME, RUN_DIR/NAME), and only its last component is
// refused if it is a symlink. [OpenPrivate] also checks that only root can
// write to it.
package safedir

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// resolve is how every name is looked up beneath a Dir.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// MaxRead is the largest file ReadFile reads: the files the program reads
// from these trees are keys, IDs and small records.
const MaxRead = 1 << 20

// Dir is an open directory. Its descriptor is an O_PATH one, which needs
// only the right to pass through the directory (x), not to list it: a
// user may read a file it knows the name of in a directory of mode 0711.
// Changing the directory itself, or listing it, opens it again.
type Dir struct {
	fd   int
	path string // for messages
}

// Open opens the directory at path. Its last component must not be a
// symlink.
func Open(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: explain(err)}
	}
	return &Dir{fd: fd, path: path}, nil
}

// OpenPrivate opens the directory at path, which must belong to root and
// be writable by nobody else: a place where root keeps its own files.
func OpenPrivate(path string) (*Dir, error) {
	d, err := Open(path)
	if err != nil {
		return nil, err
	}
	if err := d.checkPrivate(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// ErrLocked is returned by Lock when another process holds the lock and
// the caller would not wait.
var ErrLocked = errors.New("held by another process")

// Lock takes an exclusive flock(2) on the file name beneath d, made if
// missing (mode 0600), waiting for it if wait is set. The lock holds until
// the file is closed.
func (d *Dir) Lock(name string, wait bool) (*os.File, error) {
	f, err := d.openRegular(name, unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			err = ErrLocked
		}
		return nil, d.err("lock", name, err)
	}
	return f, nil
}

// ReadPrivate reads the regular file at path, in a directory of root's
// that nobody else may write (OpenPrivate): a record root wrote there.
func ReadPrivate(path string) ([]byte, error) {
	d, err := OpenPrivate(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.ReadFile(filepath.Base(path))
}

// WritePrivate replaces the file at path, in a directory of root's that
// nobody else may write (OpenPrivate), as WriteFile does: readers see the
// old file or the new one, never part of it.
func WritePrivate(path string, data []byte, perm fs.FileMode) error {
	d, err := OpenPrivate(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.WriteFile(filepath.Base(path), data, perm)
}

// OpenPrivateAll makes the directory at path and its parents (0755) if
// they are missing, as os.MkdirAll does, and opens it as OpenPrivate does:
// a directory it finds is used only if root alone can write it.
func OpenPrivateAll(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, err
	}
	return OpenPrivate(path)
}

// MakePrivate makes the directory at path (and its missing parents, 0755)
// if it is missing, gives it to root with mode perm, through its
// descriptor, and opens it: a place where root keeps its own files. perm
// must not let others write.
func MakePrivate(path string, perm fs.FileMode) (*Dir, error) {
	if perm&0o022 != 0 {
		return nil, fmt.Errorf("%s: mode %#o would let others write", path, perm)
	}
	parent := filepath.Dir(path)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	p, err := Open(parent)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.MakeDir(filepath.Base(path), perm, 0, 0)
}

func (d *Dir) checkPrivate() error {
	st, err := d.Stat()
	if err != nil {
		return err
	}
	if st.Uid != 0 || st.Mode&0o022 != 0 {
		return fmt.Errorf("%s: owned by uid %d with mode %#o; only root may write to it (remove it and start again)", d.path, st.Uid, st.Mode&0o7777)
	}
	return nil
}

// Close closes the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Path is the directory's path, for messages.
func (d *Dir) Path() string { return d.path }

// Stat returns the directory's own status.
func (d *Dir) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return st, d.err("stat", "", err)
	}
	return st, nil
}

// Chmod sets the directory's mode, through a descriptor of it.
func (d *Dir) Chmod(perm fs.FileMode) error {
	fd, err := d.reopen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return d.err("chmod", "", unix.Fchmod(fd, uint32(perm.Perm())))
}

// Chown sets the directory's owner and group, through a descriptor of it.
func (d *Dir) Chown(uid, gid int) error {
	fd, err := d.reopen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return d.err("chown", "", unix.Fchown(fd, uid, gid))
}

// reopen opens the directory itself for reading: the very directory d
// holds, whatever its path leads to now.
func (d *Dir) reopen() (int, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	return fd, d.err("open", "", err)
}

// OpenDir opens the directory name beneath d.
func (d *Dir) OpenDir(name string) (*Dir, error) {
	fd, err := d.openat(name, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOTDIR) {
		// O_DIRECTORY answers a symlink with ENOTDIR; say which it is.
		if st, lerr := d.Lstat(name); lerr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			err = d.err("open", name, unix.ELOOP)
		}
	}
	if err != nil {
		return nil, err
	}
	return &Dir{fd: fd, path: d.join(name)}, nil
}

// MkdirAll makes the directory name beneath d and every missing directory
// above it, with mode perm (for those it makes), and opens it.
func (d *Dir) MkdirAll(name string, perm fs.FileMode) (*Dir, error) {
	if err := local(name); err != nil {
		return nil, d.err("mkdir", name, err)
	}
	cur := &Dir{fd: -1, path: d.path}
	parent := d
	for _, part := range strings.Split(name, "/") {
		if err := unix.Mkdirat(parent.fd, part, uint32(perm.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
			closeIfNot(cur, d)
			return nil, parent.err("mkdir", part, err)
		}
		next, err := parent.OpenDir(part)
		closeIfNot(cur, d)
		if err != nil {
			return nil, err
		}
		cur, parent = next, next
	}
	return cur, nil
}

func closeIfNot(a, b *Dir) {
	if a != b && a.fd >= 0 {
		a.Close()
	}
}

// MakeDir makes (if missing) and opens the directory name beneath d, then
// gives it owner uid:gid and mode perm through its descriptor.
func (d *Dir) MakeDir(name string, perm fs.FileMode, uid, gid int) (*Dir, error) {
	sub, err := d.MkdirAll(name, 0o700)
	if err != nil {
		return nil, err
	}
	if err := sub.Chown(uid, gid); err != nil {
		sub.Close()
		return nil, err
	}
	if err := sub.Chmod(perm); err != nil {
		sub.Close()
		return nil, err
	}
	return sub, nil
}

// Lstat returns the status of name beneath d, without following it.
func (d *Dir) Lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	parent, base, err := d.parent(name)
	if err != nil {
		return st, err
	}
	defer closeIfNot(parent, d)
	if err := unix.Fstatat(parent.fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, d.err("lstat", name, err)
	}
	return st, nil
}

// Exists reports whether name exists beneath d (as anything).
func (d *Dir) Exists(name string) (bool, error) {
	_, err := d.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Open opens the regular file name beneath d for reading. Anything else
// (a FIFO, a device node, a directory, a symlink anywhere on the way) is
// refused without blocking: the open does not wait for a FIFO's writer, and
// a device opened by mistake is closed before it is read.
func (d *Dir) Open(name string) (*os.File, error) {
	return d.openRegular(name, unix.O_RDONLY)
}

// openRegular opens name beneath d with flags, without blocking, and keeps
// it only if it is a regular file.
func (d *Dir) openRegular(name string, flags int, mode ...uint32) (*os.File, error) {
	fd, err := d.openat(name, flags|unix.O_NONBLOCK|unix.O_NOCTTY, mode...)
	if err != nil {
		return nil, err
	}
	if err := regular(fd); err != nil {
		unix.Close(fd)
		return nil, d.err("open", name, err)
	}
	return os.NewFile(uintptr(fd), d.join(name)), nil
}

// ReadFile reads the regular file name beneath d, up to MaxRead bytes.
func (d *Dir) ReadFile(name string) ([]byte, error) {
	f, err := d.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxRead+1))
	if err != nil {
		return nil, d.err("read", name, err)
	}
	if len(b) > MaxRead {
		return nil, d.err("read", name, errors.New("file too large"))
	}
	return b, nil
}

// WriteFile replaces name beneath d with a regular file holding data, with
// mode perm, owned by the caller: it writes a temporary file in the same
// directory, syncs it, and renames it over name. A file that already holds
// data with mode perm is left alone.
func (d *Dir) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return d.write(name, data, perm, -1, -1)
}

// WriteNew writes data to name beneath d only if name does not exist yet,
// and reports whether it did. The file appears complete or not at all: it
// is written aside and linked into place (a link, unlike a rename, fails
// if name exists).
func (d *Dir) WriteNew(name string, data []byte, perm fs.FileMode) (bool, error) {
	parent, base, err := d.parent(name)
	if err != nil {
		return false, err
	}
	defer closeIfNot(parent, d)
	tmp, err := parent.writeTemp(base, data, perm)
	if err != nil {
		return false, err
	}
	defer unix.Unlinkat(parent.fd, tmp, 0) // our temporary: linked under base or not, it goes
	if err := unix.Linkat(parent.fd, tmp, parent.fd, base, 0); errors.Is(err, unix.EEXIST) {
		return false, nil
	} else if err != nil {
		return false, d.err("link", name, err)
	}
	return true, nil
}

// writeTemp writes data to a new file beside base in d, with mode perm and
// synced to disk, and returns its name.
func (d *Dir) writeTemp(base string, data []byte, perm fs.FileMode) (string, error) {
	for {
		tmp := "." + base + ".tmp-" + rand.Text()[:8]
		fd, err := unix.Openat(d.fd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", d.err("create", tmp, err)
		}
		f := os.NewFile(uintptr(fd), d.join(tmp))
		_, err = f.Write(data)
		if err == nil {
			err = unix.Fchmod(fd, uint32(perm.Perm())) // whatever the umask
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = unix.Unlinkat(d.fd, tmp, 0) // our temporary; the write's error is the one to report
			return "", d.err("write", tmp, err)
		}
		return tmp, nil
	}
}

// OpenAppend opens the regular file name beneath d for appending, making
// it with mode perm if it is missing.
func (d *Dir) OpenAppend(name string, perm fs.FileMode) (*os.File, error) {
	return d.openRegular(name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, uint32(perm.Perm()))
}

// Rename renames old to new, both beneath d. With noReplace it fails if new
// exists; without, it replaces a file, or an empty directory, as rename(2)
// does.
func (d *Dir) Rename(old, new string, noReplace bool) error {
	op, ob, err := d.parent(old)
	if err != nil {
		return err
	}
	defer closeIfNot(op, d)
	np, nb, err := d.parent(new)
	if err != nil {
		return err
	}
	defer closeIfNot(np, d)
	var flags uint
	if noReplace {
		flags = unix.RENAME_NOREPLACE
	}
	return d.err("rename", old, unix.Renameat2(op.fd, ob, np.fd, nb, flags))
}

// Remove removes the file or empty directory name beneath d; a missing
// name is not an error.
func (d *Dir) Remove(name string) error {
	parent, base, err := d.parent(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer closeIfNot(parent, d)
	err = unix.Unlinkat(parent.fd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(parent.fd, base, unix.AT_REMOVEDIR)
	}
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return d.err("remove", name, err)
}

// RemoveAll removes name beneath d and everything under it, descending
// only into real directories; a missing name is not an error.
func (d *Dir) RemoveAll(name string) error {
	st, err := d.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		sub, err := d.OpenDir(name)
		if err != nil {
			return err
		}
		names, err := sub.Names()
		if err == nil {
			for _, n := range names {
				if err = sub.RemoveAll(n); err != nil {
					break
				}
			}
		}
		sub.Close()
		if err != nil {
			return err
		}
	}
	return d.Remove(name)
}

// Names returns the names in d, unsorted.
func (d *Dir) Names() ([]string, error) {
	fd, err := d.reopen()
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil && err != io.EOF {
		return nil, d.err("readdir", "", err)
	}
	return names, nil
}

// Walk calls fn with the status of every entry beneath d (not d itself),
// parents before children, descending only into real directories.
func (d *Dir) Walk(fn func(name string, st *unix.Stat_t) error) error {
	return d.walk("", fn)
}

func (d *Dir) walk(prefix string, fn func(string, *unix.Stat_t) error) error {
	names, err := d.Names()
	if err != nil {
		return err
	}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(d.fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // gone meanwhile: the tree is live
			}
			return d.err("lstat", n, err)
		}
		if err := fn(prefix+n, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		sub, err := d.OpenDir(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		err = sub.walk(prefix+n+"/", fn)
		sub.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// openat opens name beneath d with flags (and O_CLOEXEC, O_NOFOLLOW).
func (d *Dir) openat(name string, flags int, mode ...uint32) (int, error) {
	if err := local(name); err != nil {
		return -1, d.err("open", name, err)
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: resolve}
	if len(mode) > 0 {
		how.Mode = uint64(mode[0])
	}
	for {
		fd, err := unix.Openat2(d.fd, name, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // a rename elsewhere on the system raced the lookup
		}
		if err != nil {
			return -1, d.err("open", name, err)
		}
		return fd, nil
	}
}

// parent opens the directory holding name and returns it (d itself for a
// name without a slash) with name's last component.
func (d *Dir) parent(name string) (*Dir, string, error) {
	if err := local(name); err != nil {
		return nil, "", d.err("open", name, err)
	}
	dir, base := filepath.Split(name)
	if dir == "" {
		return d, base, nil
	}
	p, err := d.OpenDir(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return nil, "", err
	}
	return p, base, nil
}

func (d *Dir) join(name string) string {
	if name == "" {
		return d.path
	}
	return d.path + "/" + name
}

func (d *Dir) err(op, name string, err error) error {
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: op, Path: d.join(name), Err: explain(err)}
}

// ErrNotRegular is the error for a file that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// ErrSymlink is the error for a name that is, or goes through, a symlink.
var ErrSymlink = errors.New("is or passes through a symlink, which is not followed here")

// explain turns the kernel's answers to a refused lookup into words.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return ErrSymlink
	case errors.Is(err, unix.EXDEV):
		return errors.New("leads outside the directory")
	case errors.Is(err, unix.ENOSYS):
		return errors.New("openat2 is not available: this needs Linux 5.6 or newer")
	}
	return err
}

// local checks name is a relative path inside the directory.
func local(name string) error {
	if name == "" || !filepath.IsLocal(name) || filepath.Clean(name) != name {
		return fmt.Errorf("%q is not a clean relative name", name)
	}
	return nil
}

// regular returns an error unless fd is a regular file.
func regular(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return ErrNotRegular
	}
	return nil
}
