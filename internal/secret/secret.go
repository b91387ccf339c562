// Package secret reads the secrets infra.toml gives a VM ([vm.NAME.secrets])
// and hands them to its guest without their touching a disk.
//
// A secret is a value of a file encrypted with SOPS (decrypted here with
// the sops library and the host's age key: $SOPS_AGE_KEY_FILE, else
// /etc/microvm/age.key) or the content of a plain file only root may read.
// At each start of the VM, before its daemons start, all of its secrets
// are read (one that cannot be read stops the start: never half of them),
// and written into a tmpfs of their own at RUN_DIR/NAME/secrets, root's
// only (0700), made read-only once written; the VM's fourth virtiofs
// share, "secrets", serves its directory guest/ (0755) read-only, and the guest mounts it
// at /run/credentials/microvm (a mount unit package guest writes). When the
// VM stops, the tmpfs is unmounted and the values are gone. They are never
// in the VM's /etc or /var (so never in its snapshots), a log, a command
// line or an environment.
package secret

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/getsops/sops/v3/cmd/sops/formats"
	"github.com/getsops/sops/v3/decrypt"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// maxSecret bounds a secret's value and a plain secret file.
const maxSecret = 1 << 20

// useAgeKey points the sops library at the host's age key, unless the
// environment names one.
func useAgeKey() {
	if os.Getenv("SOPS_AGE_KEY_FILE") == "" && os.Getenv("SOPS_AGE_KEY") == "" {
		os.Setenv("SOPS_AGE_KEY_FILE", config.DefaultAgeKey)
	}
}

// Value reads one secret's value.
func Value(s config.Secret) ([]byte, error) {
	if s.File != "" {
		return readPlain(s.File)
	}
	useAgeKey()
	data, err := readBounded(s.SOPS, maxSecret)
	if err != nil {
		return nil, err
	}
	format := config.SOPSFormat(s.SOPS)
	if !IsEncrypted(data) {
		return nil, fmt.Errorf("%s is not encrypted with sops; encrypt it: microvm secret encrypt %s", s.SOPS, s.SOPS)
	}
	plain, err := decrypt.DataWithFormat(data, formats.FormatFromString(format))
	if err != nil {
		return nil, fmt.Errorf("decrypting %s: %v (is its age key in %s, or $SOPS_AGE_KEY_FILE?)", s.SOPS, oneLine(err), keyFile())
	}
	if format == "binary" {
		return plain, nil
	}
	v, err := lookup(plain, format, s.Key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.SOPS, err)
	}
	return v, nil
}

func keyFile() string {
	if f := os.Getenv("SOPS_AGE_KEY_FILE"); f != "" {
		return f
	}
	return config.DefaultAgeKey
}

// lookup finds the value of key (a.b for a nested one) in a decrypted
// YAML, JSON or dotenv document.
func lookup(plain []byte, format, key string) ([]byte, error) {
	if format == "dotenv" {
		s := bufio.NewScanner(bytes.NewReader(plain))
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), "="); ok && k == key {
				return []byte(v), nil
			}
		}
		return nil, fmt.Errorf("has no key %q", key)
	}
	var doc any
	if err := yaml.Unmarshal(plain, &doc); err != nil { // JSON is YAML
		return nil, fmt.Errorf("reading the decrypted document: %w", err)
	}
	cur := doc
	for _, part := range strings.Split(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("has no key %q (%s is not a map)", key, part)
		}
		if cur, ok = m[part]; !ok {
			return nil, fmt.Errorf("has no key %q", key)
		}
	}
	switch v := cur.(type) {
	case string:
		return []byte(v), nil
	case int, int64, float64, bool:
		return []byte(fmt.Sprint(v)), nil
	}
	return nil, fmt.Errorf("key %q holds a %T, not a value", key, cur)
}

// readPlain reads a plain secret file, which must be root's and unreadable
// by others: a secret another user could read is not one.
func readPlain(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%s is not a regular file", path)
	case st.Uid != 0 || st.Mode&0o077 != 0:
		return nil, fmt.Errorf("%s must be root's and readable by root only (chown root: %s; chmod 600 %s)", path, path, path)
	}
	return readAll(f, path, maxSecret)
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, path, limit)
}

func readAll(f *os.File, path string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d KiB", path, limit>>10)
	}
	return b, nil
}

// oneLine keeps the first line of a library's error.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// All reads every secret of vm, or fails at the first that cannot be read,
// saying where infra.toml has it.
func All(vm *config.VM) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, s := range vm.Secrets {
		v, err := Value(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: secret %s: %w", s.At, vm.Name, s.Name, err)
		}
		out[s.Name] = v
	}
	return out, nil
}

// Check reports each of vm's secrets that cannot be read now: what plan
// checks, so that apply starts no VM that would fail for one.
func Check(vm *config.VM) []error {
	var errs []error
	for _, s := range vm.Secrets {
		if _, err := Value(s); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: secret %s: %w", s.At, vm.Name, s.Name, err))
		}
	}
	return errs
}

// Digest names the version of vm's secrets as their sources are now, not
// their values: a change in one restarts the VM (plan says "secrets
// changed: NAME", and never what they hold). It reads the encrypted files
// and, where it can, the plain ones.
func Digest(vm *config.VM) map[string]string {
	out := map[string]string{}
	for _, s := range vm.Secrets {
		h := sha256.New()
		fmt.Fprintf(h, "%s %s %s %s:%s\n", s.Key, s.Mode, s.File, s.Owner, s.Group)
		src := s.SOPS
		if src == "" {
			src = s.File
		}
		if b, err := readBounded(src, maxSecret); err == nil {
			h.Write(b)
		} else {
			fmt.Fprintf(h, "unreadable: %v", errors.Unwrap(err))
		}
		out[s.Name] = hex.EncodeToString(h.Sum(nil))[:16]
	}
	return out
}

// ErrNotTmpfs is returned when the secrets' directory is not on a tmpfs.
var ErrNotTmpfs = errors.New("not on a tmpfs")

// onTmpfs reports whether dir is a tmpfs mount.
func onTmpfs(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	if st.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s: %w", dir, ErrNotTmpfs)
	}
	return nil
}

// Owned is a secret's value with the guest's ids of its owner.
type Owned struct {
	Value    []byte
	Mode     fs.FileMode
	UID, GID int
}

// Deliver mounts a tmpfs of vm's own at vm.SecretsDir() (root's, 0700)
// and writes the secrets into its directory vm.SecretsShare(), what the
// VM's "secrets" share serves, then makes it read-only. What a previous
// start left there goes first.
func Deliver(vm *config.VM, secrets map[string]Owned) error {
	dir := vm.SecretsDir()
	if err := Remove(vm); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("making %s: %w", dir, err)
	}
	size := 64 << 10
	for _, s := range secrets {
		size += len(s.Value) + 4096
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("microvm-secrets", dir, "tmpfs", flags, fmt.Sprintf("mode=0700,size=%d,nr_inodes=%d", size, len(secrets)+16)); err != nil {
		return fmt.Errorf("mounting a tmpfs for %s's secrets at %s: %w", vm.Name, dir, err)
	}
	if err := onTmpfs(dir); err != nil {
		return err
	}
	// The guest's users must pass the share's root to reach their
	// secrets; the host's stop at dir.
	share := vm.SecretsShare()
	if err := os.Mkdir(share, 0o755); err != nil {
		return err
	}
	for name, s := range secrets {
		f, err := os.OpenFile(share+"/"+name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(s.Value)
		if err == nil {
			err = f.Chown(s.UID, s.GID)
		}
		if err == nil {
			err = f.Chmod(s.Mode)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s's secret %s: %w", vm.Name, name, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return fmt.Errorf("making %s read-only: %w", dir, err)
	}
	return nil
}

// Remove unmounts vm's secrets, if they are mounted: their values are gone
// with the tmpfs.
func Remove(vm *config.VM) error {
	dir := vm.SecretsDir()
	for {
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not (or no longer) a mount point
		}
		if err != nil {
			return fmt.Errorf("unmounting %s: %w", dir, err)
		}
	}
}
