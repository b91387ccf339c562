// Package secrettest makes real SOPS files for tests: an age key of the
// test's own, and files encrypted with it by the sops library
// (secret.Encrypt), as the sops command encrypts them.
package secrettest

import (
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/simple-microvm-infra/microvm/internal/secret"
)

// Key makes an age key in a file of the test's and returns its path and
// its recipient.
func Key(t testing.TB) (path, recipient string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "age.key")
	if err := os.WriteFile(path, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, id.Recipient().String()
}

// Encrypt writes plain (a document of the format of path's extension:
// .yaml, .json, .env, or anything else for binary) to path, encrypted for
// recipient.
func Encrypt(t testing.TB, path, recipient string, plain []byte) {
	t.Helper()
	out, err := secret.Encrypt(path, plain, recipient)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
