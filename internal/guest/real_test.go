package guest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// guestView assembles what a guest sees, the way its init does: the image
// read-only at /, the VM's etc and var over it, tmpfs on /run and /tmp.
// Then it runs script in that root, with the image's own programs, in a
// mount namespace that goes away with it.
const guestView = `set -e
mnt=$1 rootfs=$2 etc=$3 var=$4 script=$5
mount --bind "$rootfs" "$mnt"
mount -o remount,bind,ro "$mnt"
mount --bind "$etc" "$mnt/etc"
mount --bind "$var" "$mnt/var"
mount -t tmpfs tmpfs "$mnt/run"
mount -t tmpfs tmpfs "$mnt/tmp"
exec chroot "$mnt" /bin/sh -c "$script"
`

// TestRealGuest seeds a VM from the real Debian image (see package
// imagetest), writes its managed files, and checks them with the image's
// own sshd and shell, in the guest's view of its filesystem.
func TestRealGuest(t *testing.T) {
	host := imagetest.Debian(t)
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "unshare", "mount", "chroot")
	vm := testVM(t)
	rootfs := host.ImageRootfs(imagetest.Name)
	if err := Seed(vm, rootfs); err != nil {
		t.Fatal(err)
	}
	adminPub, adminKey, err := AdminKey(config.Host{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteManaged(vm, Keys{Admin: adminPub}); err != nil {
		t.Fatal(err)
	}
	hostPub, err := HostPublicKey(vm)
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name, script, want string
	}{
		// sshd accepts its configuration and the one host key, which
		// loads from the VM's /etc.
		{"sshd config", "mkdir /run/sshd && /usr/sbin/sshd -t && /usr/sbin/sshd -T | grep -i '^hostkey '", "hostkey /etc/ssh/ssh_host_ed25519_key"},
		{"host key", "ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key", hostPub},
		// root's home is /root, which is /var/root: the VM's own.
		{"root's keys", "getent passwd root | cut -d: -f6; cat /root/.ssh/authorized_keys | grep -v '^#'", "/root\n" + adminPub},
		{"/root is writable", "touch /root/x /home/x /srv/x /tmp/x && echo ok", "ok"},
		{"the image is not", "touch /usr/x 2>&1 || true", "touch: cannot touch '/usr/x': Read-only file system"},
		{"identity", "cat /etc/hostname; getent hosts vm1; wc -c < /etc/machine-id; grep nameserver /etc/resolv.conf", "vm1\n10.1.0.2        vm1\n33\nnameserver 1.1.1.1"},
		{"fstab has /tmp", "grep '^tmpfs ' /etc/fstab", "tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mnt := t.TempDir()
			cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", guestView, "sh", mnt, rootfs, vm.EtcDir, vm.VarDir, tt.script)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %s: %v", tt.script, out, err)
			}
			if got := strings.TrimSpace(string(out)); got != tt.want {
				t.Errorf("%s:\n%s\nwant\n%s", tt.script, got, tt.want)
			}
		})
	}
	// The image's sshd lets the admin key in, as root, through /root ->
	// /var/root (sshd checks the owners and modes of that path), and
	// shows the host key that HostPublicKey gives for known_hosts. The
	// client is the host's ssh; both run in a network namespace of their
	// own.
	t.Run("ssh login", func(t *testing.T) {
		testenv.NeedCommands(t, "ssh")
		knownHosts := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(knownHosts, []byte("[127.0.0.1]:2222 "+hostPub+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		script := `set -e
ip link set lo up
mount -t proc proc "$mnt/proc"
mkdir "$mnt/run/sshd"
chroot "$mnt" /usr/sbin/sshd -p 2222 -E /tmp/sshd.log
ssh -i "$key" -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$known" root@127.0.0.1 \
	'echo "$(id -un) on $(cat /etc/hostname) in $HOME"' || { cat "$mnt/tmp/sshd.log"; exit 1; }
`
		view := strings.Replace(guestView, `exec chroot "$mnt" /bin/sh -c "$script"`, `key=$6 known=$7; eval "$script"`, 1)
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork",
			"sh", "-c", view, "sh", t.TempDir(), rootfs, vm.EtcDir, vm.VarDir, script, adminKey, knownHosts)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if got, want := strings.TrimSpace(string(out)), "root on vm1 in /root"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	// Nothing was written into the image.
	for _, p := range []string{"var/root/x", "usr/x", "etc/hostname.new"} {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); err == nil {
			t.Errorf("written into the image: %s", p)
		}
	}
}
