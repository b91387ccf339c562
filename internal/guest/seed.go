// Package guest writes what a VM has of its own on the host: its state
// directory, STATE_DIR/NAME, with its /etc and /var (vm.EtcDir and
// vm.VarDir, which the guest mounts over virtiofs), and the host's admin
// SSH key that logs in to every VM.
//
// A VM's /etc and /var are seeded from its image once, at the first start
// (Seed), and are the VM's from then on: a user's changes survive restarts
// and image changes. At every start the program merges in what its image
// changed since the last start (Merge, keeping what the VM changed
// itself), rewrites the few files it manages (WriteManaged): the hostname,
// /etc/hosts, resolv.conf, root's authorized_keys, and, when missing, the
// SSH host key and machine ID; then what infra.toml declares for the VM
// (WriteDeclared): its files, services and run_once.
//
// The guest is root in its own /etc and /var and can put anything there:
// symlinks to any host path, hard links, FIFOs, device nodes. So the host
// never works inside those trees by path: everything here goes through
// package safedir, which resolves each name beneath the tree without
// following any symlink, opens only regular files, and changes modes and
// owners through descriptors. Seeding does not happen inside them at all:
// the image's trees are copied into STATE_DIR/NAME, which is root's alone
// and which the guest never sees, and renamed into place.
package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// trees are the directories of a VM's state that its guest mounts.
var trees = []string{"etc", "var"}

// OpenState makes vm's state directory (STATE_DIR/NAME) root's alone
// (root:root, 0700: the guest sees only etc and var in it, through
// virtiofsd, and no other user of the host sees anything), marks it as a
// VM's (config.VM.Marker), and opens it. With storage = "zfs" the
// directory is the VM's dataset, mounted by apply.
func OpenState(vm *config.VM) (*safedir.Dir, error) {
	d, err := safedir.MakePrivate(vm.StateDir, config.StateDirMode)
	if err != nil {
		return nil, fmt.Errorf("making %s: %w", vm.StateDir, err)
	}
	if err := d.WriteFile(filepath.Base(vm.Marker()), []byte(marker(vm.Name)), 0o600); err != nil {
		d.Close()
		return nil, fmt.Errorf("marking %s as a VM's: %w", vm.StateDir, err)
	}
	return d, nil
}

// marker is what the marker file of the VM name holds.
func marker(name string) string { return "microvm VM " + name + "\n" }

// IsVMState reports whether vm.StateDir is the state of the VM: root's,
// and marked by OpenState. Nothing else in state_dir may be deleted as a
// VM's.
func IsVMState(vm *config.VM) (bool, error) {
	d, err := safedir.OpenPrivate(vm.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer d.Close()
	b, err := d.ReadFile(filepath.Base(vm.Marker()))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return string(b) == marker(vm.Name), nil
}

// Seed copies the image's /etc and /var (under rootfs, the image's root
// filesystem) into vm.EtcDir and vm.VarDir, each only if it does not exist
// yet or is empty. A tree that has anything in it is the VM's and is left
// alone; what is in it plays no part in the decision.
//
// Each tree is copied into a staging directory of STATE_DIR/NAME
// (vm.Staging) and renamed into place, in one step, when the copy is
// complete: an interrupted seed leaves only the staging directory, which
// the next start removes and makes again.
//
// It copies with tar, which keeps what a root filesystem's files have
// (numeric owners, modes, symlinks, hard links, device nodes, times) and
// which every Linux host has; the same in Go would be a long function.
// ACLs and extended attributes are left behind on purpose: ZFS datasets
// (acltype=off, the default on Linux) refuse ACLs, and `cp -a` then fails on
// /var/log/journal, whose ACL systemd-tmpfiles sets again at boot.
func Seed(vm *config.VM, rootfs string) error {
	d, err := OpenState(vm)
	if err != nil {
		return err
	}
	defer d.Close()
	for _, tree := range trees {
		if err := seedTree(d, vm, tree, filepath.Join(rootfs, tree)); err != nil {
			return fmt.Errorf("seeding %s from %s: %w", filepath.Join(vm.StateDir, tree), filepath.Join(rootfs, tree), err)
		}
	}
	return nil
}

func seedTree(d *safedir.Dir, vm *config.VM, tree, src string) error {
	if ok, err := seededTree(d, tree); err != nil || ok {
		return err
	}
	staging := filepath.Base(vm.Staging(tree))
	if err := d.RemoveAll(staging); err != nil {
		return err
	}
	s, err := d.MakeDir(staging, 0o700, 0, 0)
	if err != nil {
		return err
	}
	s.Close()
	if err := copyTree(src, filepath.Join(d.Path(), staging)); err != nil {
		return err
	}
	// rename(2) replaces a missing or empty directory, and fails on one
	// that has something in it.
	return d.Rename(staging, tree, false)
}

// seededTree reports whether tree (etc or var) in the state directory d
// has been seeded: it is a directory with something in it.
func seededTree(d *safedir.Dir, tree string) (bool, error) {
	st, err := d.Lstat(tree)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, fmt.Errorf("%s/%s is not a directory", d.Path(), tree)
	}
	t, err := d.OpenDir(tree)
	if err != nil {
		return false, err
	}
	defer t.Close()
	names, err := t.Names()
	return len(names) > 0, err
}

// copyTree copies the tree at src into the empty directory dst, which only
// root can reach: tar -C src -c . | tar -C dst -x, with numeric owners (the
// guest's users, not the host's). The directory takes the owner and mode of
// src, as tar restores those of ".".
func copyTree(src, dst string) error {
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
		_ = unpack.Wait() // tar -c's failure is the one to report
		return fmt.Errorf("tar -c: %s: %w", strings.TrimSpace(packErr.String()), err)
	}
	if err := unpack.Wait(); err != nil {
		return fmt.Errorf("tar -x: %s: %w", strings.TrimSpace(unpackErr.String()), err)
	}
	return nil
}
