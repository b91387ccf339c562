package volume

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// testVM is a VM with one volume, data, of size bytes, in a state
// directory of its own.
func testVM(t *testing.T, size int64) *config.VM {
	t.Helper()
	return &config.VM{
		Name:     "vm1",
		StateDir: t.TempDir(),
		Volumes:  []config.Volume{{Name: "data", Size: size, Mount: "/srv", FS: "ext4", Owner: "app", At: "infra.toml:9:1"}},
	}
}

// guestOwner is what the runner resolves a volume's owner with: the
// guest's ids for its names.
func guestOwner(user, group string) (int, int, error) {
	if user == "app" {
		return 1500, 1500, nil
	}
	return 0, 0, nil
}

func prepare(t *testing.T, vm *config.VM) ([]Open, []string, error) {
	t.Helper()
	var log []string
	vols, err := Prepare(vm, 1234, 1234, guestOwner, func(f string, a ...any) {
		log = append(log, f)
	})
	t.Cleanup(func() { Close(vols) })
	return vols, log, err
}

// dumpe2fs reads what mkfs.ext4 made of a volume.
func dumpe2fs(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs %s: %s: %v", path, out, err)
	}
	return string(out)
}

// field is the value of a line "name: value" of dumpe2fs -h.
func field(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// fsSize is the size of the filesystem dumpe2fs -h described.
func fsSize(t *testing.T, info string) int64 {
	t.Helper()
	count, err1 := strconv.ParseInt(field(info, "Block count"), 10, 64)
	size, err2 := strconv.ParseInt(field(info, "Block size"), 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("dumpe2fs without a block count or size:\n%s", info)
	}
	return count * size
}

func TestPrepare(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "mkfs.ext4", "dumpe2fs", "debugfs")
	vm := testVM(t, 64<<20)
	path := vm.VolumeFile("data")

	// First start: made, sparse, the VMM user's, formatted with the
	// guest's owner at its root.
	vols, log, err := prepare(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Name != "data" {
		t.Fatalf("Prepare gave %v, want the volume data", vols)
	}
	if len(log) != 1 || !strings.HasPrefix(log[0], "volume %s made") {
		t.Errorf("log %q, want one line saying the volume was made", log)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 || st.Uid != 1234 || st.Mode&0o777 != 0o600 {
		t.Errorf("volume file: size %d uid %d mode %o, want %d, 1234, 600", st.Size, st.Uid, st.Mode&0o777, 64<<20)
	}
	if st.Blocks*512 >= st.Size/2 {
		t.Errorf("volume takes %d bytes of its %d: not sparse", st.Blocks*512, st.Size)
	}
	info := dumpe2fs(t, path)
	if got := field(info, "Filesystem volume name"); got != "data" {
		t.Errorf("filesystem's label %q, want data", got)
	}
	if got := fsSize(t, info); got != 64<<20 {
		t.Errorf("filesystem of %d bytes, want the whole volume's %d", got, 64<<20)
	}
	if out, err := exec.Command("debugfs", "-R", "stat /", path).CombinedOutput(); err != nil || !strings.Contains(string(out), "User:  1500   Group:  1500") {
		t.Errorf("the filesystem's root is not the guest's app (1500): %v\n%s", err, out)
	}
	if _, err := os.Stat(path + ".new"); !os.IsNotExist(err) {
		t.Errorf("%s.new left behind: %v", path, err)
	}

	// The next start changes nothing.
	Close(vols)
	before := dumpe2fs(t, path)
	if _, log, err = prepare(t, vm); err != nil || len(log) != 0 {
		t.Fatalf("second start: %v, log %q; want nothing done", err, log)
	}
	if after := dumpe2fs(t, path); after != before {
		t.Errorf("second start changed the filesystem")
	}

	// A larger size grows the file, not the filesystem (the guest does).
	vm.Volumes[0].Size = 128 << 20
	if _, log, err = prepare(t, vm); err != nil || len(log) != 1 || !strings.Contains(log[0], "grown") {
		t.Fatalf("growing: %v, log %q", err, log)
	}
	if fi, _ := os.Stat(path); fi.Size() != 128<<20 {
		t.Errorf("grown to %d bytes, want %d", fi.Size(), 128<<20)
	}

	// A smaller one is refused and the volume left as it is.
	vm.Volumes[0].Size = 64 << 20
	_, _, err = prepare(t, vm)
	if err == nil || !strings.Contains(err.Error(), "does not shrink") || !strings.HasPrefix(err.Error(), "infra.toml:9:1: volume data") {
		t.Errorf("shrinking: %v, want infra.toml:9:1's volume refusing to shrink", err)
	}
	if fi, _ := os.Stat(path); fi.Size() != 128<<20 {
		t.Errorf("after a refused shrink the file is %d bytes, want %d", fi.Size(), 128<<20)
	}
}

// TestPrepareRefuses: what is at a volume's name that is not a regular
// file is never opened, and a start cut short before its volume was
// formatted leaves nothing taken for a volume later.
func TestPrepareRefuses(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "mkfs.ext4", "dumpe2fs")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  string // in the error; "" for none
	}{
		{"symlink", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "host-file")
			os.WriteFile(target, []byte("host"), 0o600)
			os.Symlink(target, path)
		}, "too many levels of symbolic links"},
		{"fifo", func(t *testing.T, path string) { syscall.Mkfifo(path, 0o600) }, "not a regular file"},
		{"directory", func(t *testing.T, path string) { os.Mkdir(path, 0o700) }, "is a directory"},
		{"unformatted leftover", func(t *testing.T, path string) {
			os.WriteFile(path+".new", []byte("half made"), 0o600)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := testVM(t, 32<<20)
			path := vm.VolumeFile("data")
			os.MkdirAll(filepath.Dir(path), 0o700)
			tc.setup(t, path)
			_, _, err := prepare(t, vm)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				dumpe2fs(t, path)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Prepare: %v, want an error with %q", err, tc.want)
			}
		})
	}

	// The volumes' directory must be root's own.
	vm := testVM(t, 32<<20)
	dir := filepath.Dir(vm.VolumeFile("data"))
	os.Mkdir(dir, 0o700)
	os.Chown(dir, 1234, 1234)
	if _, _, err := prepare(t, vm); err == nil || !strings.Contains(err.Error(), "not root's directory") {
		t.Errorf("Prepare with the VM user's directory: %v, want it refused", err)
	}
}
