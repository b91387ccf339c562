package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// A VM's /etc and /var are its own, seeded from its image at its first
// start. What its image adds or changes later (a package added to it, a
// VM moved to another image, an image built again) reaches it by a
// three-way merge at each start, as OSTree merges /etc and dpkg treats a
// conffile: for each path of the image's etc and var that differs between
// the image last merged (the base, recorded in
// STATE_DIR/NAME/.image-base.json, where the guest cannot reach) and the
// image now,
//
//	added by the image, missing in the VM           -> added
//	changed by the image, the VM has the base's     -> updated
//	removed by the image, the VM has the base's     -> removed (a directory only when empty)
//	anything the VM changed itself                  -> kept, and reported
//
// A path the image did not change is never looked at, nor are the files
// the program writes itself (WriteManaged, WriteDeclared). A VM seeded
// before the record existed has an empty base: what it lacks of its image
// is added, and nothing it has is changed. The image's trees are read at
// every start (they are trusted, and small: a tenth of a second for
// Debian's), so an image built again under the same name is merged too.

// entry is one path of a tree as the merge compares it.
type entry struct {
	Type   byte   `json:"t"` // 'd', 'f' or 'l'; '?' for anything else, in a VM
	Mode   uint32 `json:"m,omitempty"`
	UID    int    `json:"u,omitempty"`
	GID    int    `json:"g,omitempty"`
	Size   int64  `json:"z,omitempty"` // a file's
	Sum    string `json:"s,omitempty"` // a file's sha256
	Target string `json:"l,omitempty"` // a symlink's
}

// manifest is every path of a VM's trees in an image: "etc/nginx/nginx.conf".
type manifest map[string]entry

// baseRecord is STATE_DIR/NAME/.image-base.json.
type baseRecord struct {
	Version int      `json:"version"`
	Image   string   `json:"image"` // the image directory last merged, for messages
	Paths   manifest `json:"paths"`
}

const (
	baseFile    = ".image-base.json"
	baseVersion = 2 // a record of another version is as none: the safe side
)

// scan reads the manifest of the image at root: its etc and var, trusted
// (the host built it), walked without following symlinks.
func scan(root string) (manifest, error) {
	m := manifest{}
	for _, tree := range trees {
		top := filepath.Join(root, tree)
		err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if rel == tree {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			st := fi.Sys().(*syscall.Stat_t)
			e := entry{Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid)}
			switch {
			case fi.IsDir():
				e.Type = 'd'
			case fi.Mode()&fs.ModeSymlink != 0:
				e.Type, e.Mode = 'l', 0
				if e.Target, err = os.Readlink(p); err != nil {
					return err
				}
			case fi.Mode().IsRegular():
				e.Type, e.Size = 'f', fi.Size()
				if e.Sum, err = fileSum(p); err != nil {
					return err
				}
			default:
				return nil // device nodes, FIFOs, sockets: not the image's to give
			}
			m[rel] = e
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading the image's %s: %w", tree, err)
		}
	}
	return m, nil
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return readSum(f)
}

func readSum(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readBase reads the VM's base record; ok is false when there is none (or
// none this version of the program can use).
func readBase(state *safedir.Dir) (base baseRecord, ok bool, err error) {
	b, err := state.ReadFile(baseFile)
	if errors.Is(err, fs.ErrNotExist) {
		return base, false, nil
	}
	if err != nil {
		return base, false, err
	}
	if json.Unmarshal(b, &base) != nil || base.Version != baseVersion || base.Paths == nil {
		return baseRecord{}, false, nil
	}
	return base, true, nil
}

// Merge brings what the image at imageRoot (the directory image under
// STATE_DIR/images, for messages) changed since the VM's last merge into
// its /etc and /var, and records it as the new base. It returns what it
// kept of the VM's own changes, or could not merge, for the log. An image
// whose trees are as last merged costs a read of them, and touches nothing
// of the VM's.
func Merge(vm *config.VM, imageRoot, image string) (kept []string, err error) {
	state, err := safedir.OpenPrivate(vm.StateDir)
	if err != nil {
		return nil, err
	}
	defer state.Close()
	base, _, err := readBase(state)
	if err != nil {
		return nil, err
	}
	if base.Paths == nil {
		base.Paths = manifest{}
	}
	now, err := scan(imageRoot)
	if err != nil {
		return nil, err
	}
	if maps.Equal(base.Paths, now) {
		if base.Image != image {
			return nil, writeBase(state, baseRecord{Version: baseVersion, Image: image, Paths: now})
		}
		return nil, nil
	}
	etc, vars, err := openTrees(vm)
	if err != nil {
		return nil, err
	}
	defer etc.Close()
	defer vars.Close()
	m := &merger{img: imageRoot, etc: etc, vars: vars, skip: untouchable(vm)}
	m.run(base.Paths, now)
	return m.kept, writeBase(state, baseRecord{Version: baseVersion, Image: image, Paths: now})
}

func writeBase(state *safedir.Dir, r baseRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return state.WriteFile(baseFile, b, 0o600)
}

// untouchable are the paths of a VM's trees the merge leaves alone, and
// EtcDiff does not list: what the program writes itself.
func untouchable(vm *config.VM) map[string]bool {
	skip := managedPaths()
	for _, f := range vm.Files {
		tree, rel := f.Tree()
		skip[tree+"/"+rel] = true
	}
	return skip
}

// managedPaths are the paths WriteManaged and writeRunOnce write.
func managedPaths() map[string]bool {
	return map[string]bool{
		"etc/hostname": true, "etc/hosts": true, "etc/resolv.conf": true, "etc/machine-id": true,
		"etc/ssh/ssh_host_ed25519_key": true, "etc/ssh/ssh_host_ed25519_key.pub": true,
		"var/root/.ssh/authorized_keys": true,
		"etc/" + JournaldDropIn:         true, "etc/" + journalFlush: true,
		"etc/" + runOnceScript: true, "etc/systemd/system/" + runOnceUnit: true, "etc/" + runOnceLink: true,
		"etc/systemd/system/" + secretsUnit: true, "etc/" + secretsLink: true,
		"etc/systemd/system/" + volumesUnit: true, "etc/" + volumesLink: true,
	}
}

// merger applies one merge.
type merger struct {
	img       string // the image's root
	etc, vars *safedir.Dir
	skip      map[string]bool
	kept      []string
	blocked   map[string]bool // paths whose insides the merge leaves alone: the VM made them something else
}

func (m *merger) run(base, now manifest) {
	var paths []string
	for p, n := range now {
		if b, ok := base[p]; !ok || b != n {
			paths = append(paths, p)
		}
	}
	for p := range base {
		if _, ok := now[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths) // a directory before what it holds
	m.blocked = map[string]bool{}
	var removed, late []string
	for _, p := range paths {
		if m.skip[p] || m.under(p) {
			continue
		}
		b, hadBase := base[p]
		n, inImage := now[p]
		d, rel := m.tree(p)
		v, has, err := vmEntry(d, rel, b, n)
		if err != nil {
			m.report(p, err)
			continue
		}
		switch {
		case !inImage: // removed by the image
			if has && v == b {
				removed = append(removed, p)
			} else if has {
				m.keep(p, "/"+p+" (the image removed it; the VM changed it)", v, b)
			}
		case has && v == n: // the VM has it already
		case !has && !hadBase, has && hadBase && v == b: // new, or the VM's is the base's
			if has && v.Type == 'd' && n.Type != 'd' {
				late = append(late, p) // once what the directory held is gone
				continue
			}
			if err := m.put(d, rel, p, n, has && v.Type != 'd'); err != nil {
				m.report(p, err)
			}
		case !has && hadBase: // the VM removed it: its choice
			m.blocked[p] = true
		default:
			m.keep(p, "/"+p, v, n)
		}
	}
	for i := len(removed) - 1; i >= 0; i-- { // what a directory holds before it
		d, rel := m.tree(removed[i])
		if err := d.Remove(rel); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
			m.report(removed[i], err)
		}
	}
	for _, p := range late {
		d, rel := m.tree(p)
		if err := d.Remove(rel); err != nil {
			m.keep(p, "/"+p+" (the image made it a file; the VM's directory has files in it)", entry{}, entry{})
			continue
		}
		if err := m.put(d, rel, p, now[p], false); err != nil {
			m.report(p, err)
		}
	}
}

// under reports whether a directory above p is blocked.
func (m *merger) under(p string) bool {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' && m.blocked[p[:i]] {
			return true
		}
	}
	return false
}

// keep reports the VM's own version of p, kept. Unless both the VM and
// the image have a directory there, what is below p is left alone too.
func (m *merger) keep(p, what string, v, n entry) {
	m.kept = append(m.kept, what)
	if v.Type != 'd' || n.Type != 'd' {
		m.blocked[p] = true
	}
}

// report says p could not be merged, and leaves what is below it alone.
func (m *merger) report(p string, err error) {
	if errors.Is(err, fs.ErrNotExist) {
		err = errors.New("its directory is gone from the VM")
	}
	m.kept = append(m.kept, fmt.Sprintf("/%s (%v)", p, err))
	m.blocked[p] = true
}

// tree returns the tree of path p and p inside it.
func (m *merger) tree(p string) (*safedir.Dir, string) {
	tree, rel, _ := strings.Cut(p, "/")
	if tree == "var" {
		return m.vars, rel
	}
	return m.etc, rel
}

// vmEntry reads what the VM has at rel, as the merge compares it with
// the entries like; has is false when it has nothing there. A file is
// hashed only when its size is one of theirs (the guest may put a file of
// any size anywhere): otherwise its sum stays empty, which no file's is.
// A FIFO, device or socket is '?', never equal to an image's entry, and is
// not opened.
func vmEntry(d *safedir.Dir, rel string, like ...entry) (e entry, has bool, err error) {
	st, err := d.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return e, false, nil
	}
	if err != nil {
		return e, false, err
	}
	e = entry{Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = 'd'
	case unix.S_IFLNK:
		e.Type, e.Mode = 'l', 0
		e.Target, err = d.Readlink(rel)
	case unix.S_IFREG:
		e.Type, e.Size = 'f', st.Size
		if !slices.ContainsFunc(like, func(l entry) bool { return l.Type == 'f' && l.Size == st.Size }) {
			break
		}
		var f *os.File
		if f, err = d.Open(rel); err == nil {
			e.Sum, err = readSum(io.LimitReader(f, st.Size+1))
			f.Close()
		}
	default:
		e.Type = '?'
	}
	return e, true, err
}

// put makes rel in the VM's tree what the image has at p. replace says
// the VM has the base's version there, not a directory: it goes first
// where the image has a directory now.
func (m *merger) put(d *safedir.Dir, rel, p string, n entry, replace bool) error {
	switch n.Type {
	case 'd':
		if replace {
			if err := d.Remove(rel); err != nil {
				return err
			}
		}
		return d.MkdirOwned(rel, fs.FileMode(n.Mode)&fs.ModePerm|modeBits(n.Mode), n.UID, n.GID)
	case 'l':
		return d.Symlink(n.Target, rel, n.UID, n.GID)
	default:
		f, err := os.Open(filepath.Join(m.img, p))
		if err != nil {
			return err
		}
		defer f.Close()
		return d.CopyOwned(rel, f, fs.FileMode(n.Mode)&fs.ModePerm|modeBits(n.Mode), n.UID, n.GID)
	}
}

// modeBits turns the setuid, setgid and sticky bits of a stat mode into
// fs.FileMode's.
func modeBits(mode uint32) fs.FileMode {
	var m fs.FileMode
	if mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// EtcChanges are the paths of a VM's /etc that differ from its image's as
// last merged: changed, added or removed by the VM, or by what infra.toml
// enables and disables in it. The files the program writes itself
// (managed, declared, run_once's) are left out: they always differ.
type EtcChanges struct {
	Changed, Added, Removed []string
}

// Len is how many paths differ.
func (c EtcChanges) Len() int { return len(c.Changed) + len(c.Added) + len(c.Removed) }

// What EtcDiff reads of a VM's /etc, which its guest can fill: at most
// this many entries, this deep.
const (
	maxEtcWalk  = 20000
	maxEtcDepth = 32
)

// EtcDiff compares the VM's /etc with its image's, as recorded at its last
// merge. ok is false when there is no record (the VM never started with
// this version of the program). A file is read only when it has the size
// of the image's.
func EtcDiff(vm *config.VM) (c EtcChanges, ok bool, err error) {
	state, err := safedir.OpenPrivate(vm.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, err
	}
	defer state.Close()
	base, ok, err := readBase(state)
	if err != nil || !ok {
		return c, false, err
	}
	etc, vars, err := openTrees(vm)
	if err != nil {
		return c, false, err
	}
	defer etc.Close()
	defer vars.Close()
	skip := untouchable(vm)
	// The directories the program makes on the way to its own files (the
	// journal's drop-in in /etc/systemd/journald.conf.d) are its own too.
	made := map[string]bool{}
	for p := range skip {
		for d := path.Dir(p); d != "." && d != "etc"; d = path.Dir(d) {
			made[d] = true
		}
	}
	seen := map[string]bool{}
	budget := maxEtcWalk
	err = walkBounded(etc, "", 1, &budget, func(d *safedir.Dir, name, rel string) error {
		p := "etc/" + rel
		seen[p] = true
		if skip[p] {
			return nil
		}
		want, inImage := base.Paths[p]
		got, has, err := vmEntry(d, name, want)
		switch {
		case err != nil || !has: // gone meanwhile, or refused: it is walked as it is
		case !inImage && made[p]:
		case !inImage:
			c.Added = append(c.Added, "/"+p)
		case got != want:
			c.Changed = append(c.Changed, "/"+p)
		}
		return nil
	})
	if err != nil {
		return EtcChanges{}, false, err
	}
	for p := range base.Paths {
		if strings.HasPrefix(p, "etc/") && !seen[p] && !skip[p] {
			c.Removed = append(c.Removed, "/"+p)
		}
	}
	slices.Sort(c.Changed)
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	return c, true, nil
}

// walkBounded calls fn with each entry beneath d (its directory, its name
// there, and its path under the walk's top), parents first, descending
// only into real directories and at most maxEtcDepth levels (no image goes
// deeper: what is below is the VM's own), budget entries in all: past that
// it fails, as the guest made its tree too large to read.
func walkBounded(d *safedir.Dir, prefix string, depth int, budget *int, fn func(d *safedir.Dir, name, rel string) error) error {
	names, err := d.NamesUpTo(*budget)
	if err != nil {
		return fmt.Errorf("more than %d entries in /etc: %w", maxEtcWalk, err)
	}
	slices.Sort(names)
	for _, n := range names {
		if *budget--; *budget < 0 {
			return fmt.Errorf("more than %d entries in /etc", maxEtcWalk)
		}
		st, err := d.Lstat(n)
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone meanwhile: the tree is live
		}
		if err != nil {
			return err
		}
		if err := fn(d, n, prefix+n); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		if depth >= maxEtcDepth {
			continue
		}
		sub, err := d.OpenDir(n)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, safedir.ErrSymlink) {
			continue // replaced meanwhile
		}
		if err != nil {
			return err
		}
		err = walkBounded(sub, prefix+n+"/", depth+1, budget, fn)
		sub.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
