// Package guest writes what a VM has of its own on the host: its /etc and
// /var (vm.EtcDir and vm.VarDir, which the guest mounts over virtiofs) and
// the host's admin SSH key that logs in to every VM.
//
// A VM's /etc and /var are seeded from its image once, at the first start
// (Seed), and are the VM's from then on: a user's changes survive restarts
// and image changes. At every start the program rewrites only the few files
// it manages (WriteManaged): the hostname, /etc/hosts, resolv.conf, root's
// authorized_keys, and, when missing, the SSH host key and machine ID.
//
// The guest is root in its own /etc and /var and can put any symlink there.
// Everything here that reads or writes in them goes through os.Root, which
// refuses paths that leave the directory, so that a guest cannot make the
// host write to, or read from, a file of its own.
package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Names Seed gives its work inside the directory it seeds, so that an
// interrupted seed is finished or redone at the next start instead of
// leaving a half-copied /etc that looks seeded. They start with a dot
// and are gone before the VM starts.
const (
	seedCopy = ".microvm-seed-copy" // being copied from the image
	seedDone = ".microvm-seed-done" // copied; its entries are being moved up
)

// Seed copies the image's /etc and /var (under rootfs, the image's root
// filesystem) into vm.EtcDir and vm.VarDir, each only if it does not exist
// yet or is empty. A directory that has anything in it is left alone.
//
// It copies with tar, which keeps what a root filesystem's files have
// (numeric owners, modes, symlinks, hard links, device nodes, times) and
// which every Linux host has; the same in Go would be a long function.
// ACLs and extended attributes are left behind on purpose: ZFS datasets
// (acltype=off, the default on Linux) refuse ACLs, and `cp -a` then fails on
// /var/log/journal, whose ACL systemd-tmpfiles sets again at boot.
//
// The copy is made inside the directory and its entries are moved up when
// it is complete, which works where the directory is a mount point (a ZFS
// dataset per VM) and lets the next Seed finish an interrupted one.
func Seed(vm *config.VM, rootfs string) error {
	for _, d := range []struct{ src, dst string }{
		{filepath.Join(rootfs, "etc"), vm.EtcDir},
		{filepath.Join(rootfs, "var"), vm.VarDir},
	} {
		if err := seedDir(d.src, d.dst); err != nil {
			return fmt.Errorf("seeding %s from %s: %w", d.dst, d.src, err)
		}
	}
	return nil
}

func seedDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	names, err := readNames(dst)
	if err != nil {
		return err
	}
	copying, done := filepath.Join(dst, seedCopy), filepath.Join(dst, seedDone)
	switch {
	case slices.Contains(names, seedDone):
		// Copied before, but not all moved up: finish.
	case len(names) == 0 || len(names) == 1 && names[0] == seedCopy:
		if err := os.RemoveAll(copying); err != nil {
			return err
		}
		if err := copyTree(src, copying); err != nil {
			return err
		}
		if err := os.Rename(copying, done); err != nil {
			return err
		}
	default:
		return os.RemoveAll(copying) // seeded before: the VM's own now
	}

	entries, err := readNames(done)
	if err != nil {
		return err
	}
	for _, name := range entries {
		if err := os.Rename(filepath.Join(done, name), filepath.Join(dst, name)); err != nil {
			return err
		}
	}
	// The directory itself takes the owner and mode of the image's.
	fi, err := os.Stat(done)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetgid)); err != nil {
		return err
	}
	return os.Remove(done)
}

// seeded reports whether Seed has completed in dir.
func seeded(dir string) (bool, error) {
	names, err := readNames(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return len(names) > 0 && !slices.Contains(names, seedCopy) && !slices.Contains(names, seedDone), nil
}

// readNames returns the names in dir, unsorted.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil && err != io.EOF {
		return nil, err
	}
	return names, nil
}

// copyTree copies the tree at src to a new directory dst: tar -C src -c . |
// tar -C dst -x, with numeric owners (the guest's users, not the host's).
func copyTree(src, dst string) error {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	pack := exec.Command("tar", "--numeric-owner", "-C", src, "-cf", "-", ".")
	unpack := exec.Command("tar", "--numeric-owner", "--same-permissions", "-C", dst, "-xf", "-")
	pipe, err := pack.StdoutPipe()
	if err != nil {
		return err
	}
	unpack.Stdin = pipe
	var packErr, unpackErr strings.Builder
	pack.Stderr, unpack.Stderr = &packErr, &unpackErr
	if err := unpack.Start(); err != nil {
		return fmt.Errorf("tar -x: %w", err)
	}
	if err := pack.Run(); err != nil {
		unpack.Wait()
		return fmt.Errorf("tar -c: %s: %w", strings.TrimSpace(packErr.String()), err)
	}
	if err := unpack.Wait(); err != nil {
		return fmt.Errorf("tar -x: %s: %w", strings.TrimSpace(unpackErr.String()), err)
	}
	return nil
}
