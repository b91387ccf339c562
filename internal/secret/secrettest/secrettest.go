// Package secrettest makes real SOPS files for tests: an age key of the
// test's own, and files encrypted with it by the sops library, as the sops
// command encrypts them (a data key per file, each value AES-GCM encrypted,
// the MAC over the tree, the data key encrypted for the age recipient).
package secrettest

import (
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/aes"
	sopsage "github.com/getsops/sops/v3/age"
	"github.com/getsops/sops/v3/cmd/sops/common"
	"github.com/getsops/sops/v3/cmd/sops/formats"
	"github.com/getsops/sops/v3/config"
	"github.com/getsops/sops/v3/keys"
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
	format := formats.FormatForPath(path)
	store := common.StoreForFormat(format, config.NewStoresConfig())
	branches, err := store.LoadPlainFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	mks, err := sopsage.MasterKeysFromRecipients(recipient)
	if err != nil {
		t.Fatal(err)
	}
	var group sops.KeyGroup
	for _, k := range mks {
		group = append(group, keys.MasterKey(k))
	}
	tree := sops.Tree{Branches: branches, Metadata: sops.Metadata{KeyGroups: []sops.KeyGroup{group}, Version: "3.13.3"}}
	dataKey, errs := tree.GenerateDataKey()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if err := common.EncryptTree(common.EncryptTreeOpts{Tree: &tree, Cipher: aes.NewCipher(), DataKey: dataKey}); err != nil {
		t.Fatal(err)
	}
	out, err := store.EmitEncryptedFile(tree)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
