package image

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// VarLinks are the places a user writes to outside /etc and /var. Every
// image has them as symlinks into /var, which is the VM's own, so that they
// are writable and persist although the image is read-only. The targets are
// relative (var/root, not /var/root) so that they also resolve inside the
// image on the host, never into the host's own /var. Mode is used when the
// tree has no such directory.
var VarLinks = []struct {
	Dir  string
	Mode fs.FileMode
}{
	{"root", 0o700},
	{"home", 0o755},
	{"srv", 0o755},
}

// TmpfsLine is the /etc/fstab line every image gets: the image is
// read-only, so /tmp must be a tmpfs of the VM's own.
const TmpfsLine = "tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0"

// sshdConfig is the sshd drop-in every image with sshd gets. The program
// gives each VM exactly one host key (package guest); without this, sshd
// also looks for RSA and ECDSA keys and logs an error for each.
const (
	sshdConfig     = "etc/ssh/sshd_config.d/microvm.conf"
	sshdConfigText = "# Written by microvm when the image was made: each VM has one SSH host key,\n# made on the host at the VM's first start.\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
)

// postProcess prepares a new root filesystem to be shared by many VMs. It
// works through os.Root: an imported tree may hold absolute or escaping
// symlinks, and following one would change a file of the host. Running it
// twice changes nothing the second time.
func postProcess(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("opening root filesystem: %w", err)
	}
	defer root.Close()
	steps := []struct {
		what string
		do   func(*os.Root) error
	}{
		{"removing SSH host keys", removeHostKeys},
		{"emptying the machine ID", emptyMachineID},
		{"forgetting the build host's name and DNS", forgetBuildHost},
		{"moving /root, /home and /srv into /var", linkIntoVar},
		{"adding /tmp to fstab", tmpfsTmp},
		{"configuring sshd's host key", sshdHostKey},
		{"cleaning apt's caches", cleanApt},
		{"removing the distribution's initrd", removeInitrd},
	}
	for _, s := range steps {
		if err := s.do(root); err != nil {
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}
	return nil
}

// removeHostKeys removes the SSH host keys the openssh-server package made:
// every VM that shares the image would otherwise have the same ones. Package
// guest makes each VM its own.
func removeHostKeys(root *os.Root) error {
	return removeGlob(root, "etc/ssh/ssh_host_*")
}

// emptyMachineID leaves /etc/machine-id empty: the ID must differ per VM,
// and /etc is per VM. Package guest writes one at a VM's first start. A
// separate D-Bus machine ID file becomes a link to it, as Debian makes it.
func emptyMachineID(root *os.Root) error {
	if err := removeIfExists(root, "etc/machine-id"); err != nil {
		return err
	}
	if err := root.WriteFile("etc/machine-id", nil, 0o444); err != nil {
		return err
	}
	const dbusID = "var/lib/dbus/machine-id"
	if fi, err := root.Lstat(dbusID); err == nil && fi.Mode().IsRegular() {
		if err := root.Remove(dbusID); err != nil {
			return err
		}
		return root.Symlink("/etc/machine-id", dbusID)
	}
	return nil
}

// forgetBuildHost resets the files debootstrap copies from the host that
// runs it. Package guest writes each VM's own at every start.
func forgetBuildHost(root *os.Root) error {
	if err := removeIfExists(root, "etc/resolv.conf"); err != nil {
		return err
	}
	if err := removeIfExists(root, "etc/hostname"); err != nil {
		return err
	}
	return root.WriteFile("etc/hostname", []byte("localhost\n"), 0o644)
}

// linkIntoVar moves /root, /home and /srv to /var/root, /var/home and
// /var/srv, contents, owner and mode included, and leaves symlinks in their
// place. A VM's /var is seeded from the image's, so each VM starts with
// root's dotfiles.
func linkIntoVar(root *os.Root) error {
	for _, l := range VarLinks {
		target := "var/" + l.Dir
		fi, err := root.Lstat(l.Dir)
		switch {
		case err == nil && fi.Mode()&fs.ModeSymlink != 0:
			// A link that cannot be read points somewhere else: the error below.
			if link, _ := root.Readlink(l.Dir); link == target || link == "/"+target {
				continue // done before
			}
			return fmt.Errorf("/%s is a symlink to somewhere else than /%s", l.Dir, target)
		case err == nil && fi.IsDir():
			if err := removeEmptyDir(root, target); err != nil {
				return err
			}
			if err := root.Rename(l.Dir, target); err != nil {
				return err
			}
		case errors.Is(err, fs.ErrNotExist):
			if err := root.MkdirAll(target, l.Mode); err != nil {
				return err
			}
			if err := root.Chmod(target, l.Mode); err != nil { // whatever the umask
				return err
			}
		case err == nil:
			return fmt.Errorf("/%s is not a directory", l.Dir)
		default:
			return err
		}
		if err := root.Symlink(target, l.Dir); err != nil {
			return err
		}
	}
	return nil
}

// removeEmptyDir removes dir if it is an empty directory, and fails if it
// is anything else: linkIntoVar will not merge two trees.
func removeEmptyDir(root *os.Root, dir string) error {
	f, err := root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(1)
	f.Close()
	if len(names) > 0 {
		return fmt.Errorf("/%s exists and is not empty", dir)
	}
	if err != io.EOF {
		return err
	}
	return root.Remove(dir)
}

// tmpfsTmp adds TmpfsLine to /etc/fstab, unless it mounts /tmp already.
func tmpfsTmp(root *os.Root) error {
	fstab, err := root.ReadFile("etc/fstab")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, line := range strings.Split(string(fstab), "\n") {
		if f := strings.Fields(line); len(f) > 1 && !strings.HasPrefix(f[0], "#") && f[1] == "/tmp" {
			return nil
		}
	}
	text := string(fstab)
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	text += "# The image is read-only and shared; /tmp is each VM's own (added by microvm).\n" + TmpfsLine + "\n"
	if err := removeIfExists(root, "etc/fstab"); err != nil { // a symlink is replaced, not followed
		return err
	}
	return root.WriteFile("etc/fstab", []byte(text), 0o644)
}

// sshdHostKey writes sshdConfig if the image has an sshd configuration.
func sshdHostKey(root *os.Root) error {
	if _, err := root.Lstat("etc/ssh/sshd_config"); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := root.MkdirAll("etc/ssh/sshd_config.d", 0o755); err != nil {
		return err
	}
	if err := removeIfExists(root, sshdConfig); err != nil {
		return err
	}
	return root.WriteFile(sshdConfig, []byte(sshdConfigText), 0o644)
}

// cleanApt does what `apt-get clean` does, and removes the package lists
// too: guests cannot install packages into the read-only image, and every
// VM's /var is a copy of the image's.
func cleanApt(root *os.Root) error {
	for _, pattern := range []string{
		"var/cache/apt/archives/*.deb",
		"var/cache/apt/archives/partial/*",
		"var/cache/apt/*.bin",
		"var/lib/apt/lists/*_*", // the lists are named after their URLs; lock and partial/ stay
		"var/lib/apt/lists/partial/*",
	} {
		if err := removeGlob(root, pattern); err != nil {
			return err
		}
	}
	return nil
}

// removeInitrd removes the initrd the kernel package made (with
// initramfs-tools) and the links to it: VMs boot the program's own
// initramfs.
func removeInitrd(root *os.Root) error {
	if err := removeGlob(root, "boot/initrd.img-*"); err != nil {
		return err
	}
	for _, link := range []string{"initrd.img", "initrd.img.old", "boot/initrd.img", "boot/initrd.img.old"} {
		if fi, err := root.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := root.Remove(link); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeGlob removes the files (not directories) matching pattern.
func removeGlob(root *os.Root, pattern string) error {
	names, err := fs.Glob(root.FS(), pattern)
	if err != nil {
		return err
	}
	for _, name := range names {
		if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
			continue
		}
		if err := root.Remove(name); err != nil {
			return err
		}
	}
	return nil
}

func removeIfExists(root *os.Root, name string) error {
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
