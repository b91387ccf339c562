package secret

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"filippo.io/age"
	"github.com/getsops/sops/v3"
	"github.com/getsops/sops/v3/aes"
	sopsage "github.com/getsops/sops/v3/age"
	"github.com/getsops/sops/v3/cmd/sops/common"
	"github.com/getsops/sops/v3/cmd/sops/formats"
	sopsconfig "github.com/getsops/sops/v3/config"
	"github.com/getsops/sops/v3/keys"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// KeyFile is the host's age key: $SOPS_AGE_KEY_FILE, else
// /etc/microvm/age.key.
func KeyFile() string { return keyFile() }

// Keygen makes the host's age key (KeyFile), root's only, unless it
// exists, and returns its public half: the recipient to encrypt for.
func Keygen() (recipient string, made bool, err error) {
	path := KeyFile()
	if b, err := os.ReadFile(path); err == nil {
		ids, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil || len(ids) == 0 {
			return "", false, fmt.Errorf("%s holds no age key: %v", path, err)
		}
		x, ok := ids[0].(*age.X25519Identity)
		if !ok {
			return "", false, fmt.Errorf("%s: its first key is not an X25519 age key", path)
		}
		return x.Recipient().String(), false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("writing the age key: %w", err)
	}
	_, err = fmt.Fprintf(f, "# the host's age key for microvm's secrets; public key: %s\n%s\n", id.Recipient(), id)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", false, err
	}
	return id.Recipient().String(), true, nil
}

// Encrypt encrypts plain, a document in the format a file called path
// has (config.SOPSFormat), for the age recipient, as the sops command
// does: a data key of its own, each value encrypted with it, the data key
// encrypted for the recipient.
func Encrypt(path string, plain []byte, recipient string) ([]byte, error) {
	store := common.StoreForFormat(formats.FormatFromString(config.SOPSFormat(path)), sopsconfig.NewStoresConfig())
	branches, err := store.LoadPlainFile(plain)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	mks, err := sopsage.MasterKeysFromRecipients(recipient)
	if err != nil {
		return nil, err
	}
	var group sops.KeyGroup
	for _, k := range mks {
		group = append(group, keys.MasterKey(k))
	}
	tree := sops.Tree{Branches: branches, Metadata: sops.Metadata{KeyGroups: []sops.KeyGroup{group}, Version: "3.13.3"}}
	dataKey, errs := tree.GenerateDataKey()
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := common.EncryptTree(common.EncryptTreeOpts{Tree: &tree, Cipher: aes.NewCipher(), DataKey: dataKey}); err != nil {
		return nil, err
	}
	return store.EmitEncryptedFile(tree)
}

// IsEncrypted reports whether the file holds sops' metadata.
func IsEncrypted(b []byte) bool {
	return bytes.Contains(b, []byte("sops")) && bytes.Contains(b, []byte("ENC[AES256_GCM")) ||
		strings.Contains(string(b), "sops_version")
}
