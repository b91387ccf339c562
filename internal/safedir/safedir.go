// Package safedir reads and writes files in directory trees that someone
// other than root can change: a VM's /etc and /var (guest root writes them
// through virtiofsd, and can put any symlink, hard link, FIFO or device
// node there) and a VMM's run directory (the VMM's user writes it).
//
// A [Dir] is an open directory. Every name given to its methods is resolved
// beneath it by the kernel, with openat2(2) and RESOLVE_BENEATH,
// RESOLVE_NO_SYMLINKS and RESOLVE_NO_MAGICLINKS: no component may be a
// symlink, not even one that stays inside the tree (Go's os.Root follows
// those), and nothing resolves outside. A name is looked up with O_PATH,
// which opens nothing, and opened only if it is a regular file: no device
// node or FIFO the guest made is ever opened. Files are written to a
// temporary file in the same directory and renamed over the name (a
// rename replaces a symlink, it never writes through one); modes and
// owners are changed through descriptors (fchmod, fchown), never by path.
// Trees are walked and removed one directory at a time, holding a few
// descriptors whatever their depth. So whatever the tree holds, the host
// reads and writes only inside it, and only the files it names.
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
	"strconv"
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
// refused without being opened at all (see openRegular).
func (d *Dir) Open(name string) (*os.File, error) {
	return d.openRegular(name, unix.O_RDONLY)
}

// openRegular opens name beneath d with flags, only if it is a regular
// file. It first looks the name up with O_PATH, which opens nothing: a
// device node's driver or a FIFO never sees an open (a watchdog device
// would start counting, a FIFO's writer would be let through), and only a
// regular file is then opened, through the descriptor of the very file
// looked up. With O_CREAT, a missing name is made with O_EXCL, which never
// opens what is already there.
func (d *Dir) openRegular(name string, flags int, mode ...uint32) (*os.File, error) {
	for {
		fd, err := d.openat(name, unix.O_PATH)
		if errors.Is(err, fs.ErrNotExist) && flags&unix.O_CREAT != 0 {
			fd, err = d.openat(name, flags|unix.O_EXCL|unix.O_NONBLOCK|unix.O_NOCTTY, mode...)
			if errors.Is(err, fs.ErrExist) {
				continue // made meanwhile: look it up again
			}
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(fd), d.join(name)), nil
		}
		if err != nil {
			return nil, err
		}
		f, err := reopenRegular(fd, flags&^(unix.O_CREAT|unix.O_EXCL))
		unix.Close(fd)
		if err != nil {
			return nil, d.err("open", name, err)
		}
		return os.NewFile(uintptr(f), d.join(name)), nil
	}
}

// reopenRegular opens the file of the O_PATH descriptor fd with flags, if
// it is a regular file. It goes through /proc/self/fd, which leads to that
// very file whatever has become of its name since; openat2 cannot reopen
// a descriptor by itself (it takes no empty path).
func reopenRegular(fd, flags int) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return -1, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK: // O_PATH|O_NOFOLLOW gives a trailing symlink itself
		return -1, ErrSymlink
	default:
		return -1, ErrNotRegular
	}
	for {
		f, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), flags|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOENT) {
			return -1, errors.New("reopening through /proc/self/fd: is /proc mounted?")
		}
		return f, err
	}
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
// only into real directories; a missing name is not an error. However deep
// the tree, it holds a few descriptors and memory linear in its depth
// (see tree).
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
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		err = sub.tree(func(parent, _ int, n string, st *unix.Stat_t) error {
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				return nil // emptied first, removed by done
			}
			if err := unix.Unlinkat(parent, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return sub.err("remove", ".../"+n, err)
			}
			return nil
		}, func(parent int, n string) error {
			if err := unix.Unlinkat(parent, n, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
				return sub.err("remove", ".../"+n, err)
			}
			return nil
		})
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
// parents before children, descending only into real directories. fn is
// given the entry's depth (1 for d's own entries) and its name in its
// directory, not a path: a guest's tree can be 20,000 directories deep.
// If fn returns fs.SkipDir for a directory, Walk does not descend into it.
// Walk holds a few descriptors and memory linear in the depth (see tree).
func (d *Dir) Walk(fn func(depth int, name string, st *unix.Stat_t) error) error {
	return d.tree(func(_, depth int, name string, st *unix.Stat_t) error {
		err := fn(depth, name, st)
		if err == fs.SkipDir && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return errSkip
		}
		return err
	}, nil)
}

// errSkip is what visit returns to tree for a directory not to enter.
var errSkip = errors.New("skip this directory")

// frame is a directory on tree's way down: the names in it still to
// visit, its own name in its parent, and its identity, to know it again
// on the way back up.
type frame struct {
	names    []string
	name     string
	dev, ino uint64
}

// tree visits everything beneath d, depth first, one directory at a time:
// visit gets each entry with the descriptor of its directory, its depth
// and its status (errSkip for a directory: do not enter it); done, if not
// nil, gets each directory once everything beneath it was visited, with
// its parent's descriptor (RemoveAll removes it then).
//
// Only the descriptor of the directory being visited is kept open: tree
// goes down by name and back up by "..", and checks that ".." is the very
// directory it came from (a guest may move directories meanwhile; it
// then fails rather than climb out of d). So a tree of any depth takes
// two or three descriptors, and memory for one frame per level, the names
// still to visit included; no path is built.
func (d *Dir) tree(visit func(parent, depth int, name string, st *unix.Stat_t) error, done func(parent int, name string) error) error {
	cur, err := unix.Openat(d.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return d.err("open", "", err)
	}
	defer func() { unix.Close(cur) }()
	top, err := d.enter(cur, "")
	if err != nil {
		return err
	}
	stack := []frame{top}
	for len(stack) > 0 {
		f := &stack[len(stack)-1]
		if len(f.names) == 0 {
			if len(stack) == 1 {
				return nil
			}
			// Back up to the parent, which must be the one it came from.
			up, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return d.err("open", ".../"+f.name+"/..", err)
			}
			var st unix.Stat_t
			if err := unix.Fstat(up, &st); err != nil {
				unix.Close(up)
				return d.err("stat", ".../"+f.name+"/..", err)
			}
			p := stack[len(stack)-2]
			if st.Dev != p.dev || st.Ino != p.ino {
				unix.Close(up)
				return d.err("walk", ".../"+f.name, errors.New("moved while the tree was walked"))
			}
			unix.Close(cur)
			cur = up
			name := f.name
			stack = stack[:len(stack)-1]
			if done != nil {
				if err := done(cur, name); err != nil {
					return err
				}
			}
			continue
		}
		n := f.names[len(f.names)-1]
		f.names = f.names[:len(f.names)-1]
		var st unix.Stat_t
		if err := unix.Fstatat(cur, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // gone meanwhile: the tree is live
			}
			return d.err("lstat", ".../"+n, err)
		}
		err := visit(cur, len(stack), n, &st)
		if err == errSkip {
			continue
		}
		if err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		how := unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: resolve}
		sub, err := unix.Openat2(cur, n, &how)
		for errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			sub, err = unix.Openat2(cur, n, &how)
		}
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return d.err("open", ".../"+n, err)
		}
		next, err := d.enter(sub, n)
		if err != nil {
			unix.Close(sub)
			return err
		}
		unix.Close(cur)
		cur = sub
		stack = append(stack, next)
	}
	return nil
}

// enter reads the directory of the O_PATH descriptor fd, called name in
// its parent, into a frame.
func (d *Dir) enter(fd int, name string) (frame, error) {
	f := frame{name: name}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return f, d.err("stat", ".../"+name, err)
	}
	f.dev, f.ino = st.Dev, st.Ino
	list, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return f, d.err("open", ".../"+name, err)
	}
	file := os.NewFile(uintptr(list), name)
	defer file.Close()
	f.names, err = file.Readdirnames(-1)
	if err != nil && err != io.EOF {
		return f, d.err("readdir", ".../"+name, err)
	}
	return f, nil
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
