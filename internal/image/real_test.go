package image_test

// The real image: made once by image.Build with debootstrap, in the cache
// directory of package imagetest. Run it with
//
//	MICROVM_TEST_IMAGE_BUILD=1 go test -timeout 30m -run Real ./internal/image/

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
)

func TestRealImage(t *testing.T) {
	host := imagetest.Debian(t)
	rootfs := host.ImageRootfs(imagetest.Name)

	t.Run("kernel", func(t *testing.T) {
		b, err := os.ReadFile(host.ImageKernel(imagetest.Name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 0x206 || string(b[0x202:0x206]) != "HdrS" {
			t.Errorf("%s is not a bzImage", host.ImageKernel(imagetest.Name))
		}
		k, err := kernel.Find(rootfs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kernel.Modules(k.Modules, kernel.GuestModules...); err != nil {
			t.Errorf("the modules the guest's init loads: %v", err)
		}
		if !strings.HasSuffix(k.Version, "-cloud-amd64") {
			t.Errorf("kernel %s is not Debian's cloud kernel", k.Version)
		}
	})

	t.Run("programs", func(t *testing.T) {
		// Each package of the recipe, by a file it installs.
		for _, p := range []string{
			"usr/lib/systemd/systemd", "usr/sbin/sshd", "usr/sbin/acpid", "usr/bin/apt-get", "usr/bin/ip", "usr/bin/ping",
			"usr/bin/nc.openbsd", "usr/bin/curl", "usr/bin/ps", "etc/ssl/certs/ca-certificates.crt",
		} {
			if _, err := os.Stat(filepath.Join(rootfs, p)); err != nil {
				t.Errorf("missing /%s: %v", p, err)
			}
		}
		// Left out: D-Bus (and with it logind).
		if _, err := os.Stat(filepath.Join(rootfs, "usr/bin/dbus-daemon")); err == nil {
			t.Error("the lean image has D-Bus")
		}
		if got, _ := os.Readlink(filepath.Join(rootfs, "usr/sbin/init")); !strings.HasSuffix(got, "systemd/systemd") {
			t.Errorf("/sbin/init is a link to %q, want systemd", got)
		}
		// ping needs CAP_NET_RAW: a file capability (an xattr) or setuid.
		ping := filepath.Join(rootfs, "usr/bin/ping")
		fi, err := os.Stat(ping)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Getxattr(ping, "security.capability", nil); err != nil && fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("ping has neither a file capability (%v) nor setuid", err)
		}
	})

	t.Run("prepared for sharing", func(t *testing.T) {
		for _, l := range image.VarLinks {
			if got, err := os.Readlink(filepath.Join(rootfs, l.Dir)); got != "var/"+l.Dir {
				t.Errorf("/%s links to %q (%v), want var/%s", l.Dir, got, err, l.Dir)
			}
		}
		if _, err := os.Stat(filepath.Join(rootfs, "var/root/.bashrc")); err != nil {
			t.Errorf("root's dotfiles did not move to /var/root: %v", err)
		}
		keys, _ := filepath.Glob(filepath.Join(rootfs, "etc/ssh/ssh_host_*"))
		if len(keys) > 0 {
			t.Errorf("host keys left in the image: %q", keys)
		}
		if b, err := os.ReadFile(filepath.Join(rootfs, "etc/machine-id")); err != nil || len(b) > 0 {
			t.Errorf("machine-id = %q, %v; want empty", b, err)
		}
		if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/fstab")); !bytes.Contains(b, []byte(image.TmpfsLine)) {
			t.Errorf("fstab does not mount /tmp:\n%s", b)
		}
		for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "boot/initrd.img*", "initrd.img*"} {
			if m, _ := filepath.Glob(filepath.Join(rootfs, pattern)); len(m) > 0 || pattern == "initrd.img*" && lexists(filepath.Join(rootfs, "initrd.img")) {
				t.Errorf("left in the image: %q", m)
			}
		}
	})

	t.Run("recipe", func(t *testing.T) {
		m, err := image.ReadMeta(host, imagetest.Name)
		if err != nil || !m.Current(imagetest.Name) {
			t.Errorf("metadata %v, %v; want the current recipe", m, err)
		}
		// A few of the lean recipe's changes, as systemd will read them.
		for name, want := range map[string]string{
			"etc/systemd/system/systemd-udevd.service":                                "/dev/null",
			"etc/systemd/system/systemd-logind.service":                               "/dev/null",
			"etc/systemd/system-generators/systemd-gpt-auto-generator":                "/dev/null",
			"etc/systemd/system/multi-user.target.wants/ssh.service":                  "/lib/systemd/system/ssh.service",
			"etc/systemd/system/multi-user.target.wants/microvm-shutdown-log.service": "/usr/lib/systemd/system/microvm-shutdown-log.service",
		} {
			if got, err := os.Readlink(filepath.Join(rootfs, name)); got != want {
				t.Errorf("/%s links to %q (%v), want %s", name, got, err, want)
			}
		}
		if _, err := os.Lstat(filepath.Join(rootfs, "etc/systemd/system/timers.target.wants/apt-daily.timer")); err == nil {
			t.Error("apt-daily.timer is still enabled")
		}
	})

	t.Run("list", func(t *testing.T) {
		infos, err := image.List(host)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range infos {
			if info.Name == imagetest.Name {
				t.Logf("image %s: %d MiB, kernel %s, made %s", info.Name, info.Size>>20, info.Kernel, info.Created.Format("2006-01-02 15:04"))
				if info.Kernel == "" || info.Size < 100<<20 || info.Created.IsZero() {
					t.Errorf("List: %+v", info)
				}
				return
			}
		}
		t.Errorf("List = %+v, has no %s", infos, imagetest.Name)
	})
}

func lexists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
