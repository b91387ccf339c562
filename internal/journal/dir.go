package journal

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Limits on a journal directory: journald writes one subdirectory per
// machine ID, and in it the active files and the archived ones.
const (
	maxDirs  = 64
	maxFiles = 4096
)

// Dir is the journal files of one directory (a VM's /var/log/journal),
// read through safedir. Each file is followed by its inode, so a file
// that journald renames when it archives it is read on from where it was,
// and a new one from its start.
type Dir struct {
	root  *safedir.Dir
	files map[uint64]*openFile // by inode
}

type openFile struct {
	f   *os.File
	jf  *File
	pos Pos
}

// OpenDir opens the journal directory root (the caller opened it through
// safedir; Dir closes it).
func OpenDir(root *safedir.Dir) *Dir { return &Dir{root: root, files: map[uint64]*openFile{}} }

// Close closes the directory and its files.
func (d *Dir) Close() {
	for _, of := range d.files {
		of.f.Close()
	}
	d.root.Close()
}

// Poll reads the entries written since the last Poll (at the first, all of
// them) in every file of the directory, sorted by time, and calls fn with
// each. Files it cannot read are reported in the error, and skipped.
func (d *Dir) Poll(fn func(Entry)) error {
	var problems []string
	seen := map[uint64]bool{}
	var all []Entry
	subs, err := d.root.Names()
	if err != nil {
		return err
	}
	sort.Strings(subs)
	if len(subs) > maxDirs {
		problems = append(problems, fmt.Sprintf("%d directories; reading the first %d", len(subs), maxDirs))
		subs = subs[:maxDirs]
	}
	files := 0
	for _, sub := range subs {
		st, err := d.root.Lstat(sub)
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		sd, err := d.root.OpenDir(sub)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		names, err := sd.Names()
		if err != nil {
			sd.Close()
			problems = append(problems, err.Error())
			continue
		}
		sort.Strings(names)
		for _, n := range names {
			if !strings.HasSuffix(n, ".journal") && !strings.HasSuffix(n, ".journal~") {
				continue
			}
			if files++; files > maxFiles {
				problems = append(problems, fmt.Sprintf("more than %d files; the rest are not read", maxFiles))
				break
			}
			st, err := sd.Lstat(n)
			if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue
			}
			of, ok := d.files[st.Ino]
			if !ok {
				f, err := sd.Open(n)
				if err != nil {
					problems = append(problems, err.Error())
					continue
				}
				jf, err := OpenFile(f)
				if err != nil {
					f.Close()
					problems = append(problems, fmt.Sprintf("%s/%s: %v", sub, n, err))
					continue
				}
				of = &openFile{f: f, jf: jf}
				d.files[st.Ino] = of
			} else if fi, err := of.f.Stat(); err != nil {
				continue
			} else if err := of.jf.Refresh(fi.Size()); err != nil {
				problems = append(problems, fmt.Sprintf("%s/%s: %v", sub, n, err))
				continue
			}
			seen[st.Ino] = true
			if err := of.jf.Read(&of.pos, func(e Entry) { all = append(all, e) }); err != nil {
				problems = append(problems, fmt.Sprintf("%s/%s: %v", sub, n, err))
			}
		}
		sd.Close()
	}
	for ino, of := range d.files {
		if !seen[ino] { // removed by journald's vacuum
			of.f.Close()
			delete(d.files, ino)
		}
	}
	slices.SortStableFunc(all, func(a, b Entry) int {
		if c := a.Realtime.Compare(b.Realtime); c != 0 {
			return c
		}
		switch {
		case a.Seqnum < b.Seqnum:
			return -1
		case a.Seqnum > b.Seqnum:
			return 1
		}
		return 0
	})
	for _, e := range all {
		fn(e)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}
