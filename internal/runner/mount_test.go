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

// TestProtectState: a setuid program or a device node a guest made in its
// /etc or /var is inert on the host: root cannot open the device (here
// /dev/zero's numbers) through it, while the VM runs and, with plain
// directories, after it stopped too (the guest's watchdog node stays dead
// between runs). With ZFS the mount made for a ZFS that ignores setuid=off
// and devices=off goes when the VM stops.
func TestProtectState(t *testing.T) {
	for _, tt := range []struct {
		storage   config.Storage
		afterStop bool // still protected once the VM stopped
	}{
		{config.StorageDir, true},
		{config.StorageZFS, false},
	} {
		t.Run(string(tt.storage), func(t *testing.T) {
			// A tmpfs mounted without nodev: where /tmp has nodev, the
			// premise below would not hold.
			top := testenv.DeviceDir(t)
			vm := &config.VM{Name: "vm1", StateDir: filepath.Join(top, "vm1")}
			h := config.Host{StateDir: top, Storage: tt.storage}
			dev := filepath.Join(vm.StateDir, "var", "zero")
			if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
				t.Fatal(err)
			}
			if err := canOpen(dev); err != nil {
				t.Fatalf("the device opens before (the test's premise): %v", err)
			}
			undo, err := protectState(h, vm)
			if err != nil {
				t.Fatal(err)
			}
			inert := func(when string) {
				t.Helper()
				var st unix.Statfs_t
				if err := unix.Statfs(vm.StateDir, &st); err != nil || st.Flags&(unix.ST_NOSUID|unix.ST_NODEV) != unix.ST_NOSUID|unix.ST_NODEV {
					t.Errorf("%s: flags %#x, %v; want nosuid and nodev", when, st.Flags, err)
				}
				if err := canOpen(dev); !errors.Is(err, os.ErrPermission) {
					t.Errorf("%s: opening the guest's device node: %v; want permission denied", when, err)
				}
			}
			inert("while it runs")
			// Already protected: nothing more is mounted, and nothing to undo.
			again, err := protectState(h, vm)
			if err != nil {
				t.Fatal(err)
			}
			again()
			if ok, _ := mountinfo.IsPoint(vm.StateDir); !ok {
				t.Error("the second call unmounted the first one's mount")
			}
			undo() // the VM stops
			if tt.afterStop {
				inert("after it stopped")
			} else if ok, _ := mountinfo.IsPoint(vm.StateDir); ok {
				t.Error("still mounted after the VM stopped")
			}
		})
	}
}

// canOpen opens path for reading and closes it.
func canOpen(path string) error {
	f, err := os.Open(path)
	if err == nil {
		f.Close()
	}
	return err
}
