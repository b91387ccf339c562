package runner

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestProtectState: while a VM runs, a setuid program or a device node its
// guest made in its /etc or /var is inert on the host: root cannot open
// the device (here /dev/zero's numbers) through it. Once the VM stops the
// mount is gone.
func TestProtectState(t *testing.T) {
	testenv.NeedRoot(t)
	// A tmpfs of the test's own, mounted without nodev: where /tmp has
	// nodev, the premise below would not hold.
	top := t.TempDir()
	if err := unix.Mount("tmpfs", top, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(top, unix.MNT_DETACH) })
	vm := &config.VM{Name: "vm1", StateDir: filepath.Join(top, "vm1")}
	dev := filepath.Join(vm.StateDir, "var", "zero")
	if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Open(dev); err != nil {
		t.Fatalf("the device opens before (the test's premise): %v", err)
	} else {
		f.Close()
	}
	undo, err := protectState(vm)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(vm.StateDir, &st); err != nil || st.Flags&(unix.ST_NOSUID|unix.ST_NODEV) != unix.ST_NOSUID|unix.ST_NODEV {
		t.Errorf("flags %#x, %v; want nosuid and nodev", st.Flags, err)
	}
	if f, err := os.Open(dev); !errors.Is(err, os.ErrPermission) {
		if f != nil {
			f.Close()
		}
		t.Errorf("opening the guest's device node: %v; want permission denied", err)
	}
	// Already protected: nothing more is mounted, and nothing to undo.
	again, err := protectState(vm)
	if err != nil {
		t.Fatal(err)
	}
	again()
	if ok, _ := mountinfo.IsPoint(vm.StateDir); !ok {
		t.Error("the second call unmounted the first one's mount")
	}
	undo()
	if ok, _ := mountinfo.IsPoint(vm.StateDir); ok {
		t.Error("still mounted after undo")
	}
}
