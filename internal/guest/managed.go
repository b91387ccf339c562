package guest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Keys are the public keys that may log in to a VM as root, each in
// authorized_keys form ("ssh-ed25519 AAAA... comment").
type Keys struct {
	Admin string   // the host's admin key, from AdminKey
	Users []string // more keys, for people
}

// header starts every managed file that has comments.
const header = "# Managed by microvm: rewritten at every start of the VM; changes here are lost.\n"

// WriteManaged writes the files of the VM's /etc and /var that the program
// manages, and only those:
//
//	/etc/hostname                  the VM's name
//	/etc/hosts                     localhost, and the VM's name at its address
//	/etc/resolv.conf               the VM's DNS server
//	/root/.ssh/authorized_keys     keys (in vm.VarDir, as /root is /var/root)
//	/etc/ssh/ssh_host_ed25519_key  the VM's SSH host key, made once and kept
//	/etc/machine-id                made once, when it is empty (or not an ID)
//
// Each file is replaced atomically (a temporary file renamed over it), and
// left as it is when it already has the content. Seed must have run.
func WriteManaged(vm *config.VM, keys Keys) error {
	for _, dir := range []string{vm.EtcDir, vm.VarDir} {
		if ok, err := seeded(dir); err != nil {
			return fmt.Errorf("writing managed files: %w", err)
		} else if !ok {
			return fmt.Errorf("writing managed files: %s is not seeded from the image yet", dir)
		}
	}
	authorized, err := authorizedKeys(keys)
	if err != nil {
		return err
	}

	etc, err := os.OpenRoot(vm.EtcDir)
	if err != nil {
		return fmt.Errorf("writing managed files: %w", err)
	}
	defer etc.Close()
	for _, f := range []struct{ name, text string }{
		{"hostname", vm.Name + "\n"},
		{"hosts", hosts(vm)},
		{"resolv.conf", header + "nameserver " + vm.DNS + "\n"},
	} {
		if err := writeFile(etc, f.name, []byte(f.text), 0o644); err != nil {
			return fmt.Errorf("writing /etc/%s: %w", f.name, err)
		}
	}
	if err := machineID(etc); err != nil {
		return fmt.Errorf("writing /etc/machine-id: %w", err)
	}
	hostKey, err := filepath.Rel(vm.EtcDir, vm.HostKey())
	if err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	if err := etc.MkdirAll(filepath.Dir(hostKey), 0o755); err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	if _, err := keyPair(etc, hostKey, "root@"+vm.Name); err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}

	vars, err := os.OpenRoot(vm.VarDir)
	if err != nil {
		return fmt.Errorf("writing managed files: %w", err)
	}
	defer vars.Close()
	// sshd ignores authorized_keys unless only its owner can write to
	// it and to the directories above it.
	ak, err := filepath.Rel(vm.VarDir, vm.AuthorizedKeys())
	if err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	if err := vars.MkdirAll(filepath.Dir(ak), 0o700); err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	if err := vars.Chmod(filepath.Dir(ak), 0o700); err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	if err := writeFile(vars, ak, []byte(authorized), 0o600); err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	return nil
}

// HostPublicKey returns the VM's SSH host key in authorized_keys form, for
// a known_hosts line. WriteManaged makes it.
func HostPublicKey(vm *config.VM) (string, error) {
	etc, err := os.OpenRoot(vm.EtcDir)
	if err != nil {
		return "", fmt.Errorf("reading the SSH host key: %w", err)
	}
	defer etc.Close()
	name, err := filepath.Rel(vm.EtcDir, vm.HostKey())
	if err != nil {
		return "", fmt.Errorf("reading the SSH host key: %w", err)
	}
	b, err := etc.ReadFile(name + ".pub")
	if err != nil {
		return "", fmt.Errorf("reading the SSH host key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func hosts(vm *config.VM) string {
	return header +
		"127.0.0.1\tlocalhost\n" +
		vm.Addr.String() + "\t" + vm.Name + "\n" +
		"::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"ff02::1\tip6-allnodes\n" +
		"ff02::2\tip6-allrouters\n"
}

// authorizedKeys renders keys as an authorized_keys file, checking each.
func authorizedKeys(keys Keys) (string, error) {
	var b strings.Builder
	b.WriteString(header)
	for i, k := range append([]string{keys.Admin}, keys.Users...) {
		k = strings.TrimSpace(k)
		if i == 0 && k == "" {
			return "", errors.New("writing root's authorized_keys: the admin key is missing")
		}
		if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || len(bytes.TrimSpace(rest)) > 0 {
			if err == nil {
				err = errors.New("more than one line")
			}
			return "", fmt.Errorf("writing root's authorized_keys: key %q: %w", abbrev(k), err)
		}
		b.WriteString(k + "\n")
	}
	return b.String(), nil
}

// machineID writes a new machine ID unless /etc/machine-id has one. The
// image's is empty: the ID must differ per VM. It is made here rather than
// left to systemd, because an empty file would make the first boot a
// "first boot" (ConditionFirstBoot), which runs setup units meant for a
// person at a console.
func machineID(etc *os.Root) error {
	b, err := etc.ReadFile("machine-id")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if isMachineID(strings.TrimSpace(string(b))) {
		return nil
	}
	// As systemd makes one (sd_id128_randomize): random, marked as a
	// version 4 UUID.
	id := make([]byte, 16)
	rand.Read(id)
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return writeFile(etc, "machine-id", []byte(hex.EncodeToString(id)+"\n"), 0o444)
}

// isMachineID reports whether s is 32 lowercase hex digits, not all zero.
func isMachineID(s string) bool {
	if len(s) != 32 || s == strings.Repeat("0", 32) {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// writeFile replaces name in root with a file holding data, atomically: it
// writes a temporary file in the same directory and renames it over name.
// A rename replaces a symlink rather than writing where it points. A file
// that already holds data with mode perm is left alone.
func writeFile(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	if fi, err := root.Lstat(name); err == nil && fi.Mode() == perm {
		if old, err := root.ReadFile(name); err == nil && bytes.Equal(old, data) {
			return nil
		}
	}
	tmp, err := writeTemp(root, name, data, perm)
	if err != nil {
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}

// writeTemp writes data to a new file beside name, with mode perm and
// synced to disk, and returns the file's name.
func writeTemp(root *os.Root, name string, data []byte, perm fs.FileMode) (string, error) {
	var tmp string
	var f *os.File
	for {
		tmp = filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+rand.Text()[:8])
		var err error
		f, err = root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		break
	}
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // whatever the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		root.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// abbrev shortens a key for an error message.
func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
