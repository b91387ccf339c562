package config

import "path/filepath"

// Guest paths: the host's admin key, the files of a VM's own /etc and /var
// that the program writes (package guest), and the directory of all images.
// Derived here, like every other name.
//
//	STATE_DIR/admin/id_ed25519                    the host's admin SSH key (and .pub): how `microvm ssh` and the tests log in
//	STATE_DIR/NAME/                               root's only (0700); the guest sees only etc and var in it
//	STATE_DIR/NAME/.microvm-vm                    the mark that NAME is (or was) a VM: destroy deletes nothing without it
//	STATE_DIR/NAME/.disk-usage                    the disk use of etc and var last measured, and when (status reads it)
//	STATE_DIR/NAME/.etc.new, .var.new             the image's etc and var being copied, before they are renamed to etc and var
//	STATE_DIR/NAME/etc/ssh/ssh_host_ed25519_key   the VM's SSH host key (and .pub), generated once
//	STATE_DIR/NAME/var/root/.ssh/authorized_keys  root's authorized keys: an image's /root is a symlink to var/root
//
// /root, /home and /srv of every image are symlinks into /var (var/root,
// var/home, var/srv), because /var is the VM's own and writable while the
// image is shared and read-only.

// Marker is the file that marks vm.StateDir as the state of the VM:
// written when the VM is first prepared, and required by destroy, so that
// no other directory of state_dir is ever deleted as a VM's. Only root can
// write there.
func (vm *VM) Marker() string { return filepath.Join(vm.StateDir, vmMarker) }

const vmMarker = ".microvm-vm"

// UsageRecord is where the disk use of vm's etc and var is recorded with
// the time it was measured (package storage): measuring walks trees the
// guest makes, so status does not do it every time.
func (vm *VM) UsageRecord() string { return filepath.Join(vm.StateDir, ".disk-usage") }

// Staging is where the image's tree (etc or var) is copied for the VM
// before it becomes vm's own: a directory the guest never sees.
func (vm *VM) Staging(tree string) string { return filepath.Join(vm.StateDir, "."+tree+".new") }

// AdminKey is the private half of the host's admin SSH key, in OpenSSH
// format; the public half is beside it, with ".pub" appended.
func (h Host) AdminKey() string { return filepath.Join(h.StateDir, "admin", "id_ed25519") }

// HostKey is the VM's ed25519 SSH host key as the guest's sshd reads it
// (/etc/ssh/ssh_host_ed25519_key); the public half is beside it, with ".pub".
func (vm *VM) HostKey() string { return filepath.Join(vm.EtcDir, "ssh", "ssh_host_ed25519_key") }

// AuthorizedKeys is root's authorized_keys as the guest's sshd reads it
// (/root/.ssh/authorized_keys, which is /var/root/.ssh/authorized_keys).
func (vm *VM) AuthorizedKeys() string {
	return filepath.Join(vm.VarDir, "root", ".ssh", "authorized_keys")
}

// ImagesDir holds every image: it is the parent of each ImageDir. Image
// builds are staged in it, in directories whose names start with a dot.
func (h Host) ImagesDir() string { return filepath.Dir(h.ImageDir("image")) }

// IsImageName reports whether s can name an image. It is the rule the image
// key of infra.toml follows, so that every image made can be used.
func IsImageName(s string) bool { return isName(s) }
