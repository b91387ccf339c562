package secret_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/secret"
	"github.com/simple-microvm-infra/microvm/internal/secret/secrettest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestValue decrypts real SOPS files of every format with the test's age
// key, reads a root-only plain file, and fails closed otherwise.
func TestValue(t *testing.T) {
	keyFile, recipient := secrettest.Key(t)
	t.Setenv("SOPS_AGE_KEY_FILE", keyFile)
	dir := t.TempDir()
	files := map[string]string{
		"db.yaml":  "password: hunter2\nnested:\n  token: abc123\nport: 6379\n",
		"db.json":  `{"password": "json-secret"}`,
		"db.env":   "PASSWORD=dotenv-secret\n",
		"cert.bin": "-----BEGIN binary-----\n",
	}
	for name, plain := range files {
		secrettest.Encrypt(t, filepath.Join(dir, name), recipient, []byte(plain))
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "db.yaml"))
	if bytes.Contains(raw, []byte("hunter2")) || !bytes.Contains(raw, []byte("ENC[AES256_GCM")) {
		t.Fatalf("the test's sops file is not encrypted:\n%s", raw)
	}
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("plain-secret"), 0o600)
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("x"), 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(plain, link)
	clear := filepath.Join(dir, "clear.yaml")
	os.WriteFile(clear, []byte("password: in-clear\n"), 0o600)

	for _, c := range []struct {
		s       config.Secret
		want    string
		wantErr string
	}{
		{config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "password"}, "hunter2", ""},
		{config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "nested.token"}, "abc123", ""},
		{config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "port"}, "6379", ""},
		{config.Secret{SOPS: filepath.Join(dir, "db.json"), Key: "password"}, "json-secret", ""},
		{config.Secret{SOPS: filepath.Join(dir, "db.env"), Key: "PASSWORD"}, "dotenv-secret", ""},
		{config.Secret{SOPS: filepath.Join(dir, "cert.bin")}, files["cert.bin"], ""},
		{config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "nosuch"}, "", `has no key "nosuch"`},
		{config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "nested"}, "", "not a value"},
		{config.Secret{SOPS: filepath.Join(dir, "missing.yaml"), Key: "x"}, "", "no such file"},
		{config.Secret{File: plain}, "plain-secret", ""},
		{config.Secret{File: open}, "", "readable by root only"},
		{config.Secret{File: link}, "", "too many levels of symbolic links"},
		{config.Secret{SOPS: clear, Key: "password"}, "", "not encrypted with sops; encrypt it: microvm secret encrypt"},
	} {
		got, err := secret.Value(c.s)
		switch {
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%+v: got %q, %v; want an error with %q", c.s, got, err, c.wantErr)
		case c.wantErr == "" && (err != nil || string(got) != c.want):
			t.Errorf("%+v: got %q, %v; want %q", c.s, got, err, c.want)
		}
	}

	// Another age key cannot decrypt it: the start fails, closed.
	other, _ := secrettest.Key(t)
	t.Setenv("SOPS_AGE_KEY_FILE", other)
	if got, err := secret.Value(config.Secret{SOPS: filepath.Join(dir, "db.yaml"), Key: "password"}); err == nil || !strings.Contains(err.Error(), "decrypting") {
		t.Errorf("with a wrong age key: %q, %v; want a decryption error", got, err)
	}
	vm := &config.VM{Name: "db", Secrets: []config.Secret{{Name: "password", SOPS: filepath.Join(dir, "db.yaml"), Key: "password", At: "infra.toml:9:1"}}}
	if errs := secret.Check(vm); len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), "infra.toml:9:1: db: secret password: decrypting") {
		t.Errorf("Check with a wrong key = %v; want the entry's position and why", errs)
	}
}

// TestDeliver: the secrets land in a tmpfs of their own, with their
// owners and modes, read-only; Remove takes them away.
func TestDeliver(t *testing.T) {
	testenv.NeedRoot(t)
	vm := &config.VM{Name: "db", RunDir: t.TempDir()}
	err := secret.Deliver(vm, map[string]secret.Owned{
		"password": {Value: []byte("hunter2"), Mode: 0o440, UID: 999, GID: 998},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Remove(vm)
	var fs unix.Statfs_t
	if err := unix.Statfs(vm.SecretsDir(), &fs); err != nil || fs.Type != unix.TMPFS_MAGIC || fs.Flags&unix.ST_RDONLY == 0 {
		t.Errorf("%s: type %#x flags %#x (%v); want a read-only tmpfs", vm.SecretsDir(), fs.Type, fs.Flags, err)
	}
	var st unix.Stat_t
	p := filepath.Join(vm.SecretsShare(), "password")
	if err := unix.Stat(p, &st); err != nil || st.Uid != 999 || st.Gid != 998 || st.Mode&0o777 != 0o440 {
		t.Errorf("%s: %d:%d %o (%v); want 999:998 0440", p, st.Uid, st.Gid, st.Mode&0o777, err)
	}
	if err := unix.Stat(vm.SecretsDir(), &st); err != nil || st.Mode&0o777 != 0o700 || st.Uid != 0 {
		t.Errorf("the secrets' directory: %d %o; want root's, 0700", st.Uid, st.Mode&0o777)
	}
	if err := unix.Stat(vm.SecretsShare(), &st); err != nil || st.Mode&0o777 != 0o755 || st.Uid != 0 {
		t.Errorf("the shared directory: %d %o; want root's, 0755 (the guest's users pass it)", st.Uid, st.Mode&0o777)
	}
	if err := secret.Remove(vm); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err == nil {
		t.Error("the secret is still there after Remove")
	}
}
