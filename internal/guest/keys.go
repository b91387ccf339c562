package guest

import (
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// AdminComment is the comment of the admin key, which names it in a VM's
// authorized_keys.
const AdminComment = "microvm-admin"

// AdminKey returns the host's admin SSH key: its public half in
// authorized_keys form, and the path of its private half (OpenSSH format,
// mode 0600), for `ssh -i`. The key is made at the first call and kept.
// Every VM authorizes it, so `microvm ssh` and the tests can log in.
func AdminKey(host config.Host) (pub, privPath string, err error) {
	privPath = host.AdminKey()
	d, err := safedir.MakePrivate(filepath.Dir(privPath), 0o700)
	if err != nil {
		return "", "", fmt.Errorf("making the admin key: %w", err)
	}
	defer d.Close()
	pub, err = keyPair(d, filepath.Base(privPath), AdminComment)
	if err != nil {
		return "", "", fmt.Errorf("making the admin key: %w", err)
	}
	return pub, privPath, nil
}

// keyPair returns the public half of the SSH key name in d, in
// authorized_keys form with comment, making an ed25519 key first if there
// is none. The private key is never replaced; the public half, name.pub,
// is written from it. If another process makes a key at the same time,
// the first one written is kept by both.
func keyPair(d *safedir.Dir, name, comment string) (string, error) {
	data, err := d.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = newKey(comment)
		if err == nil {
			var created bool
			if created, err = d.WriteNew(name, data, 0o600); err == nil && !created {
				data, err = d.ReadFile(name)
			}
		}
	}
	if err != nil {
		return "", err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " " + comment
	if err := d.WriteFile(name+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return "", err
	}
	return pub, nil
}

// newKey makes an ed25519 key in OpenSSH format.
func newKey(comment string) ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(block), nil
}
