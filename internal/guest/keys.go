package guest

import (
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
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
	dir := filepath.Dir(privPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("making the admin key: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", "", fmt.Errorf("making the admin key: %w", err)
	}
	defer root.Close()
	pub, err = keyPair(root, filepath.Base(privPath), AdminComment)
	if err != nil {
		return "", "", fmt.Errorf("making the admin key: %w", err)
	}
	return pub, privPath, nil
}

// keyPair returns the public half of the SSH key name in root, in
// authorized_keys form with comment, making an ed25519 key first if there
// is none. The private key is never replaced; the public half, name.pub,
// is written from it.
func keyPair(root *os.Root, name, comment string) (string, error) {
	data, err := root.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = newKey(root, name, comment)
	}
	if err != nil {
		return "", err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " " + comment
	if err := writeFile(root, name+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return "", err
	}
	return pub, nil
}

// newKey makes an ed25519 key, writes it to name in OpenSSH format, and
// returns what it wrote. The file is linked into place, which unlike a
// rename fails if name exists: if another process made a key meanwhile,
// that key is kept and returned.
func newKey(root *os.Root, name, comment string) ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	data := pem.EncodeToMemory(block)
	tmp, err := writeTemp(root, name, data, 0o600)
	if err != nil {
		return nil, err
	}
	defer root.Remove(tmp)
	if err := root.Link(tmp, name); errors.Is(err, fs.ErrExist) {
		return root.ReadFile(name)
	} else if err != nil {
		return nil, err
	}
	return data, nil
}
