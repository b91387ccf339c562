package safedir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestOwned: what the host writes on a guest's behalf has the owner and
// mode it is given (setuid bits too, which chown clears), and each of the
// guest's traps on the way (a symlink at the name or on the way, a FIFO at
// the name) changes nothing outside the tree.
func TestOwned(t *testing.T) {
	testenv.NeedRoot(t)
	type op struct {
		name string
		do   func(d *Dir, name string) error
	}
	ops := []op{
		{"WriteFileOwned", func(d *Dir, name string) error {
			return d.WriteFileOwned(name, []byte("data\n"), 0o750|fs.ModeSetuid, 33, 34)
		}},
		{"CopyOwned", func(d *Dir, name string) error {
			return d.CopyOwned(name, strings.NewReader("data\n"), 0o750|fs.ModeSetuid, 33, 34)
		}},
		{"Symlink", func(d *Dir, name string) error { return d.Symlink("/target", name, 33, 34) }},
		{"MkdirOwned", func(d *Dir, name string) error { return d.MkdirOwned(name, 0o750|fs.ModeSetgid, 33, 34) }},
	}
	for _, o := range ops {
		t.Run(o.name, func(t *testing.T) {
			guest, secret := tree(t)
			outside := filepath.Dir(secret)
			d, err := Open(guest)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			// A new name, and one on a real path: made with that owner and mode.
			for _, name := range []string{"new", "ssh/new"} {
				if err := o.do(d, name); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(guest, name), &st); err != nil {
					t.Fatal(err)
				}
				wantMode := uint32(0o4750)
				switch o.name {
				case "Symlink":
					wantMode = st.Mode & 0o7777 // a symlink's mode means nothing
				case "MkdirOwned":
					wantMode = 0o2750
				}
				if st.Uid != 33 || st.Gid != 34 || st.Mode&0o7777 != wantMode {
					t.Errorf("%s is %d:%d %#o, want 33:34 %#o", name, st.Uid, st.Gid, st.Mode&0o7777, wantMode)
				}
				if err := o.do(d, name); err != nil {
					t.Errorf("%s again: %v", name, err)
				}
			}
			// Traps: through each, nothing outside changes.
			for _, name := range []string{"out/new", "dotdot/new", "inside-link/new", "secret-link", "fifo"} {
				err := o.do(d, name)
				if strings.Contains(name, "/") && err == nil {
					t.Errorf("%s: no error through a symlink", name)
				}
			}
			if b, _ := os.ReadFile(secret); string(b) != "host secret\n" {
				t.Errorf("the secret outside changed: %q", b)
			}
			var st unix.Stat_t
			unix.Stat(secret, &st)
			if st.Uid != 0 || st.Mode&0o7777 != 0o600 {
				t.Errorf("the secret outside is now %d %#o", st.Uid, st.Mode&0o7777)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 1 {
				t.Errorf("outside now holds %v", entries)
			}
			if _, err := os.Lstat(filepath.Join(guest, "ssh", "new")); err != nil {
				t.Errorf("ssh/new: %v", err)
			}
		})
	}
}

// TestMkdirOwnedRefuses: a symlink or a FIFO where a directory goes is an
// error; the FIFO is not opened (its writer would be let through).
func TestMkdirOwnedRefuses(t *testing.T) {
	testenv.NeedRoot(t)
	guest, secret := tree(t)
	d, _ := Open(guest)
	defer d.Close()
	for _, name := range []string{"out", "inside-link", "fifo"} {
		if err := d.MkdirOwned(name, 0o755, 33, 33); err == nil {
			t.Errorf("MkdirOwned(%s): no error", name)
		}
	}
	var st unix.Stat_t
	unix.Stat(filepath.Dir(secret), &st)
	if st.Uid != 0 || st.Mode&0o777 != 0o755 {
		t.Errorf("the directory outside is now %d %#o", st.Uid, st.Mode&0o777)
	}
}

func TestNamesUpTo(t *testing.T) {
	dir := t.TempDir()
	for i := range 300 {
		os.WriteFile(filepath.Join(dir, "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26))), nil, 0o644)
	}
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if names, err := d.NamesUpTo(300); err != nil || len(names) != 300 {
		t.Errorf("NamesUpTo(300) = %d names, %v", len(names), err)
	}
	if _, err := d.NamesUpTo(299); !errors.Is(err, errTooMany) {
		t.Errorf("NamesUpTo(299) of 300: %v, want %v", err, errTooMany)
	}
}
