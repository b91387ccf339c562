package guest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
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
//	/etc/systemd/journald.conf.d/microvm.conf   the journal kept in /var, capped (journal.go)
//
// Each file is replaced atomically (a temporary file renamed over it), and
// left as it is when it already has the content. A directory on the way
// that the guest replaced with a symlink is an error: nothing is written
// there. Seed must have run.
func WriteManaged(vm *config.VM, keys Keys) error {
	authorized, err := authorizedKeys(keys)
	if err != nil {
		return err
	}
	etc, vars, err := openTrees(vm)
	if err != nil {
		return fmt.Errorf("writing managed files: %w", err)
	}
	defer etc.Close()
	defer vars.Close()
	for _, f := range []struct{ name, text string }{
		{"hostname", vm.Name + "\n"},
		{"hosts", hosts(vm)},
		{"resolv.conf", header + "nameserver " + vm.DNS + "\n"},
	} {
		if err := etc.WriteFile(f.name, []byte(f.text), 0o644); err != nil {
			return fmt.Errorf("writing /etc/%s: %w", f.name, err)
		}
	}
	if err := machineID(etc); err != nil {
		return fmt.Errorf("writing /etc/machine-id: %w", err)
	}
	if err := writeJournald(etc); err != nil {
		return err
	}
	hostKey, err := filepath.Rel(vm.EtcDir, vm.HostKey())
	if err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	ssh, err := etc.MkdirAll(filepath.Dir(hostKey), 0o755)
	if err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}
	defer ssh.Close()
	if _, err := keyPair(ssh, filepath.Base(hostKey), "root@"+vm.Name); err != nil {
		return fmt.Errorf("writing the SSH host key: %w", err)
	}

	// sshd ignores authorized_keys unless only its owner can write to
	// it and to the directories above it.
	ak, err := filepath.Rel(vm.VarDir, vm.AuthorizedKeys())
	if err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	dotSSH, err := vars.MkdirAll(filepath.Dir(ak), 0o700)
	if err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	defer dotSSH.Close()
	if err := dotSSH.Chmod(0o700); err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	if err := dotSSH.WriteFile(filepath.Base(ak), []byte(authorized), 0o600); err != nil {
		return fmt.Errorf("writing root's authorized_keys: %w", err)
	}
	return nil
}

// openTrees opens vm's etc and var, which Seed must have made.
func openTrees(vm *config.VM) (etc, vars *safedir.Dir, err error) {
	d, err := safedir.OpenPrivate(vm.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s is not seeded from the image yet", vm.StateDir)
	}
	if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	for _, tree := range trees {
		if ok, err := seededTree(d, tree); err != nil {
			return nil, nil, err
		} else if !ok {
			return nil, nil, fmt.Errorf("%s is not seeded from the image yet", filepath.Join(vm.StateDir, tree))
		}
	}
	if etc, err = d.OpenDir("etc"); err != nil {
		return nil, nil, err
	}
	if vars, err = d.OpenDir("var"); err != nil {
		etc.Close()
		return nil, nil, err
	}
	return etc, vars, nil
}

// HostPublicKey returns the VM's SSH host key in authorized_keys form, for
// a known_hosts line. WriteManaged makes it.
func HostPublicKey(vm *config.VM) (string, error) {
	name, err := filepath.Rel(vm.StateDir, vm.HostKey())
	if err != nil {
		return "", fmt.Errorf("reading the SSH host key: %w", err)
	}
	d, err := safedir.OpenPrivate(vm.StateDir)
	if err != nil {
		return "", fmt.Errorf("reading the SSH host key: %w", err)
	}
	defer d.Close()
	b, err := d.ReadFile(name + ".pub")
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
// person at a console. Something other than a regular file there (a
// symlink, a FIFO the guest made) is replaced.
func machineID(etc *safedir.Dir) error {
	b, err := etc.ReadFile("machine-id")
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, safedir.ErrSymlink) && !errors.Is(err, safedir.ErrNotRegular) {
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
	return etc.WriteFile("machine-id", []byte(hex.EncodeToString(id)+"\n"), 0o444)
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

// abbrev shortens a key for an error message.
func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
