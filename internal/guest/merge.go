package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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
// VM moved to another image) reaches it by a three-way merge at each start
// whose image differs from the one last merged, as OSTree merges /etc and
// dpkg treats a conffile: for each path of the image's etc and var that
// changed between the image last merged (the base, recorded in
// STATE_DIR/NAME/.image-base.json, where the guest cannot reach) and the
// image now,
//
//	added by the image, missing in the VM           -> added
//	changed by the image, the VM has the base's     -> updated
//	removed by the image, the VM has the base's     -> removed (a directory only when empty)
//	anything the VM changed itself                  -> kept, and reported
//
// A path the image did not change is never touched, nor are the files the
// program writes itself (WriteManaged, WriteDeclared). A VM seeded before
// the record existed has an empty base: what it lacks of its image is
// added, and nothing it has is changed.

// entry is one path of a tree as the merge compares it.
type entry struct {
	Type   byte   `json:"t"` // 'd', 'f' or 'l'
	Mode   uint32 `json:"m,omitempty"`
	UID    int    `json:"u,omitempty"`
	GID    int    `json:"g,omitempty"`
	Sum    string `json:"s,omitempty"` // a file's sha256
	Target string `json:"l,omitempty"` // a symlink's
}

// manifest is every path of a VM's trees in an image: "etc/nginx/nginx.conf".
type manifest map[string]entry

// baseRecord is STATE_DIR/NAME/.image-base.json.
type baseRecord struct {
	Image string   `json:"image"` // the image directory last merged
	Paths manifest `json:"paths"`
}

const baseFile = ".image-base.json"

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
				e.Type = 'f'
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
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Merge brings what the image at imageRoot (in the directory image under
// STATE_DIR/images) changed since the VM's last merge into its /etc and
// /var, and records it as the new base. It returns what it kept of the
// VM's own changes, for the log. An image already merged costs nothing.
func Merge(vm *config.VM, imageRoot, image string) (kept []string, err error) {
	state, err := safedir.OpenPrivate(vm.StateDir)
	if err != nil {
		return nil, err
	}
	defer state.Close()
	var base baseRecord
	if b, err := state.ReadFile(baseFile); err == nil {
		if err := json.Unmarshal(b, &base); err != nil {
			base = baseRecord{} // unreadable: as if none, the safe side
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if base.Image == image && base.Paths != nil {
		return nil, nil
	}
	now, err := scan(imageRoot)
	if err != nil {
		return nil, err
	}
	if base.Paths == nil {
		base.Paths = manifest{}
	}
	etc, vars, err := openTrees(vm)
	if err != nil {
		return nil, err
	}
	defer etc.Close()
	defer vars.Close()
	m := &merger{img: imageRoot, etc: etc, vars: vars, skip: untouchable(vm)}
	m.run(base.Paths, now)
	if err := writeBase(state, baseRecord{Image: image, Paths: now}); err != nil {
		return m.kept, err
	}
	return m.kept, nil
}

func writeBase(state *safedir.Dir, r baseRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return state.WriteFile(baseFile, b, 0o600)
}

// untouchable are the paths of a VM's trees the merge leaves alone: what
// the program writes itself.
func untouchable(vm *config.VM) map[string]bool {
	skip := map[string]bool{}
	for p := range managedPaths() {
		skip[p] = true
	}
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
	var removed []string
	for _, p := range paths {
		if m.skip[p] {
			continue
		}
		b, hadBase := base[p]
		n, inImage := now[p]
		d, rel := m.tree(p)
		v, has, err := m.vmEntry(d, rel)
		if err != nil {
			m.kept = append(m.kept, fmt.Sprintf("/%s: %v", p, err))
			continue
		}
		switch {
		case !inImage: // removed by the image
			if has && v == b {
				removed = append(removed, p)
			} else if has {
				m.kept = append(m.kept, "/"+p+" (the image removed it; the VM changed it)")
			}
		case has && v == n: // the VM has it already
		case !has && !hadBase, has && hadBase && v == b: // new, or the VM's is the base's
			if err := m.put(d, rel, p, n); err != nil {
				m.kept = append(m.kept, fmt.Sprintf("/%s: %v", p, err))
			}
		case !has && hadBase: // the VM removed it: its choice
		default:
			m.kept = append(m.kept, "/"+p)
		}
	}
	for i := len(removed) - 1; i >= 0; i-- { // what a directory holds before it
		d, rel := m.tree(removed[i])
		if err := d.Remove(rel); err != nil && !errors.Is(err, unix.ENOTEMPTY) {
			m.kept = append(m.kept, fmt.Sprintf("/%s: %v", removed[i], err))
		}
	}
}

// tree returns the tree of path p and p inside it.
func (m *merger) tree(p string) (*safedir.Dir, string) {
	tree, rel, _ := strings.Cut(p, "/")
	if tree == "var" {
		return m.vars, rel
	}
	return m.etc, rel
}

// vmEntry reads what the VM has at rel, as the merge compares it; has is
// false when it has nothing there. A FIFO, device or socket is "something
// else": never equal to an image's entry.
func (m *merger) vmEntry(d *safedir.Dir, rel string) (e entry, has bool, err error) {
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
		e.Type = 'f'
		var f *os.File
		if f, err = d.Open(rel); err == nil {
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			e.Sum = hex.EncodeToString(h.Sum(nil))
		}
	default:
		e.Type = '?'
	}
	return e, true, err
}

// put makes rel in the VM's tree what the image has at p.
func (m *merger) put(d *safedir.Dir, rel, p string, n entry) error {
	switch n.Type {
	case 'd':
		return d.MkdirOwned(rel, fs.FileMode(n.Mode)&fs.ModePerm|modeBits(n.Mode), n.UID, n.GID)
	case 'l':
		if st, err := d.Lstat(rel); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return errors.New("a directory in the VM where the image has a symlink")
		}
		return d.Symlink(n.Target, rel, n.UID, n.GID)
	default:
		data, err := os.ReadFile(filepath.Join(m.img, p))
		if err != nil {
			return err
		}
		return d.WriteFileOwned(rel, data, fs.FileMode(n.Mode)&fs.ModePerm|modeBits(n.Mode), n.UID, n.GID)
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

// EtcChanges are the files of a VM's /etc that differ from its image's as
// last merged: changed, added or removed by the VM (or by the program:
// its managed and declared files are among them).
type EtcChanges struct {
	Changed, Added, Removed []string
}

// Len is how many paths differ.
func (c EtcChanges) Len() int { return len(c.Changed) + len(c.Added) + len(c.Removed) }

// maxEtcWalk bounds what EtcDiff reads of a VM's /etc, which its guest
// can fill.
const maxEtcWalk = 20000

// maxEtcDepth is as deep as EtcDiff looks into /etc.
const maxEtcDepth = 32

// EtcDiff compares the VM's /etc with its image's, as recorded at its last
// merge. ok is false when there is no record (the VM never started with
// this version of the program).
func EtcDiff(vm *config.VM) (c EtcChanges, ok bool, err error) {
	state, err := safedir.OpenPrivate(vm.StateDir)
	if err != nil {
		return c, false, err
	}
	defer state.Close()
	b, err := state.ReadFile(baseFile)
	if errors.Is(err, fs.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, err
	}
	var base baseRecord
	if err := json.Unmarshal(b, &base); err != nil {
		return c, false, nil
	}
	etc, vars, err := openTrees(vm)
	if err != nil {
		return c, false, err
	}
	defer etc.Close()
	defer vars.Close()
	m := &merger{etc: etc, vars: vars}
	seen := map[string]bool{}
	n := 0
	var stack []string // the path down to the entry, a name a level
	err = etc.Walk(func(depth int, entryName string, st *unix.Stat_t) error {
		if n++; n > maxEtcWalk {
			return fmt.Errorf("more than %d entries in /etc", maxEtcWalk)
		}
		if depth > maxEtcDepth {
			return fs.SkipDir // no image goes this deep: the VM's own
		}
		stack = append(stack[:depth-1], entryName)
		name := strings.Join(stack, "/")
		p := "etc/" + name
		seen[p] = true
		want, inImage := base.Paths[p]
		got, has, err := m.vmEntry(etc, name)
		switch {
		case err != nil || !has:
		case !inImage:
			c.Added = append(c.Added, "/"+p)
		case got != want:
			c.Changed = append(c.Changed, "/"+p)
		}
		return nil
	})
	for p := range base.Paths {
		if strings.HasPrefix(p, "etc/") && !seen[p] {
			c.Removed = append(c.Removed, "/"+p)
		}
	}
	slices.Sort(c.Changed)
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	return c, true, err
}
