package cli

import (
	"fmt"
	"os"

	"github.com/simple-microvm-infra/microvm/internal/secret"
)

func secretCmd() *command {
	return &command{
		name:   "secret",
		args:   "COMMAND",
		short:  "make the host's age key, and encrypt secrets' files for it (SOPS)",
		noFile: true,
		long: `
A VM's secrets ([vm.NAME.secrets] in infra.toml) come from files encrypted
with SOPS, decrypted on the host with its age key (/etc/microvm/age.key, or
$SOPS_AGE_KEY_FILE) when the VM starts, and given to the guest in memory
only (/run/credentials/microvm/NAME). These two commands do what the sops
and age-keygen commands would, with the same file format: files they
encrypt open with sops, and the reverse.

Examples:
  sudo microvm secret keygen
  sudo microvm secret encrypt /etc/microvm/secrets/db.yaml`,
		sub: []*command{secretKeygenCmd(), secretEncryptCmd()},
	}
}

func secretKeygenCmd() *command {
	return &command{
		name:   "keygen",
		args:   "",
		short:  "make the host's age key, unless it has one, and print its public key",
		noFile: true,
		long: `
Makes the host's age key (/etc/microvm/age.key, or $SOPS_AGE_KEY_FILE),
root's only (0600), unless it exists, and prints its public key: the
recipient to encrypt secrets for, here or elsewhere (sops --age KEY).
Keep a copy of the key where you keep your other keys: without it, the
secrets encrypted for it cannot be read.

Examples:
  sudo microvm secret keygen`,
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := needRoot("the age key is root's"); err != nil {
				return err
			}
			recipient, made, err := secret.Keygen()
			if err != nil {
				return err
			}
			if made {
				fmt.Fprintf(e.stderr, "age key made in %s (keep a copy of it)\n", secret.KeyFile())
			}
			fmt.Fprintln(e.stdout, recipient)
			return nil
		},
	}
}

func secretEncryptCmd() *command {
	return &command{
		name:   "encrypt",
		args:   "FILE",
		short:  "encrypt a file of secrets in place, for the host's age key",
		noFile: true,
		long: `
Encrypts FILE in place with SOPS for the host's age key (secret keygen
makes it): a .yaml, .yml, .json or .env file value by value (its keys stay
readable), anything else as one binary value. The file is replaced at
once; one that is encrypted already is refused.

Examples:
  sudo microvm secret encrypt /etc/microvm/secrets/db.yaml`,
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name the file to encrypt", errUsage)
			}
			path := args[0]
			plain, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if secret.IsEncrypted(plain) {
				return fmt.Errorf("%s is encrypted already", path)
			}
			recipient, _, err := secret.Keygen()
			if err != nil {
				return err
			}
			out, err := secret.Encrypt(path, plain, recipient)
			if err != nil {
				return err
			}
			tmp := path + ".microvm-new"
			if err := os.WriteFile(tmp, out, 0o600); err != nil {
				return err
			}
			if err := os.Rename(tmp, path); err != nil {
				os.Remove(tmp)
				return err
			}
			fmt.Fprintf(e.stdout, "%s encrypted for %s\n", path, recipient)
			return nil
		},
	}
}
