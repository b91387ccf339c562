package config

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// [vm.NAME.secrets] gives a VM secrets it reads from memory, never from
// its disk: each is a file under /run/credentials/microvm in the guest, on
// a share of a tmpfs of the host that only this VM's daemon serves
// (package secret).
//
//	[vm.db.secrets]
//	password = { sops = "secrets/db.yaml", key = "password", owner = "redis" }
//	token = { file = "/etc/microvm/secrets/token" }
//
// sops is a file encrypted with SOPS (YAML, JSON, dotenv or binary, by its
// extension), relative to infra.toml's directory, decrypted with the host's
// age key (/etc/microvm/age.key, or $SOPS_AGE_KEY_FILE); key is the value's
// key in it (a.b for a nested one; none for a binary file). file is a
// plain file of the host that only root may read. mode is octal, "0400" by
// default; owner is "USER" or "USER:GROUP" of the guest, "root" by default.
// Nothing of a secret's value is read here: plan and the VM's start
// decrypt them, and fail if one cannot be.

// Secret is one entry of [vm.NAME.secrets].
type Secret struct {
	Name  string // its file under /run/credentials/microvm
	SOPS  string // the encrypted file (absolute), or ""
	Key   string // the value's key in it, a.b for nested ones
	File  string // a plain root-only file (absolute), or ""
	Mode  fs.FileMode
	Owner string
	Group string
	At    string // file:line:col of the entry
}

// SecretsDir is the guest's directory of secrets.
const SecretsDir = "/run/credentials/microvm"

var secretKeys = []string{"sops", "key", "file", "mode", "owner"}

// secretName accepts what can name a file of secrets: letters, digits,
// '.', '_' and '-', not starting with a dot.
func secretName(s string) string {
	if s == "" || len(s) > 64 || s[0] == '.' {
		return "is not a secret's name; use letters, digits, '.', '_' and '-' (at most 64), e.g. \"password\""
	}
	if c, ok := badRune(s, "._-"); ok {
		return fmt.Sprintf("contains %q; a secret's name is a file name of letters, digits, '.', '_' and '-', e.g. \"db-password\"", c)
	}
	return ""
}

// secrets validates a VM's [vm.NAME.secrets] (nil when it has none).
func (p *parser) secrets(raw *rawEntries, key string) []Secret {
	if raw == nil {
		return nil
	}
	var out []Secret
	for _, name := range raw.order {
		r := raw.byName[name]
		at := fmt.Sprintf("%s:%d:%d", p.file, r.at.Line, r.at.Col)
		if msg := secretName(name); msg != "" {
			p.errorf(r.at, "%s: %q %s", key, name, msg)
			continue
		}
		s := Secret{Name: name, Mode: 0o400, Owner: "root", At: at}
		str := func(k string) (string, bool) {
			v, ok := r.vals[k]
			if !ok {
				return "", false
			}
			x, ok := p.str(v, fmt.Sprintf("%s: the %s of %q", key, k, name))
			return x, ok
		}
		sopsFile, hasSOPS := str("sops")
		plain, hasFile := str("file")
		switch {
		case hasSOPS && hasFile:
			p.errorf(r.at, "%s: %q has both sops and file; give one of them", key, name)
			continue
		case !hasSOPS && !hasFile:
			p.errorf(r.at, "%s: %q has neither sops nor file; add sops = \"secrets/FILE.yaml\" with its key, or file = \"/etc/microvm/secrets/%s\"", key, name, name)
			continue
		case hasSOPS:
			if sopsFile == "" {
				p.errorf(r.vals["sops"].pos, "%s: the sops file of %q is empty; name a file, relative to %s", key, name, filepath.Base(p.file))
				continue
			}
			s.SOPS = sopsFile
			if !filepath.IsAbs(sopsFile) {
				s.SOPS = filepath.Join(filepath.Dir(p.file), sopsFile)
			}
			k, hasKey := str("key")
			switch {
			case SOPSFormat(s.SOPS) == "binary" && hasKey:
				p.errorf(r.vals["key"].pos, "%s: %q: %s is a binary sops file (not .yaml, .json or .env), whose whole content is the secret; remove key", key, name, sopsFile)
				continue
			case SOPSFormat(s.SOPS) != "binary" && (!hasKey || k == "" || strings.Contains(k, "..") || strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".")):
				p.errorf(r.at, "%s: %q needs the key of its value in %s, e.g. key = \"password\" (a.b for a nested one)", key, name, sopsFile)
				continue
			}
			s.Key = k
		default:
			if !filepath.IsAbs(plain) || filepath.Clean(plain) != plain {
				p.errorf(r.vals["file"].pos, "%s: the file of %q, %q, must be a clean absolute path, e.g. \"/etc/microvm/secrets/%s\"", key, name, plain, name)
				continue
			}
			if _, ok := r.vals["key"]; ok {
				p.errorf(r.vals["key"].pos, "%s: %q: key goes with sops; a plain file's whole content is the secret", key, name)
				continue
			}
			s.File = plain
		}
		if v, ok := r.vals["mode"]; ok {
			m, msg := parseMode(v)
			if msg != "" {
				p.errorf(v.pos, "%s: the mode of %q %s", key, name, msg)
				continue
			}
			s.Mode = m
		}
		if o, ok := str("owner"); ok {
			user, group, msg := parseOwner(o)
			if msg != "" {
				p.errorf(r.vals["owner"].pos, "%s: the owner of %q, %q, %s", key, name, o, msg)
				continue
			}
			s.Owner, s.Group = user, group
		}
		if s.Group == "" {
			s.Group = s.Owner
		}
		out = append(out, s)
	}
	return out
}

// SOPSFormat is the format sops gives a file of this name: "yaml",
// "json", "dotenv" or "binary".
func SOPSFormat(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return "yaml"
	case ".json":
		return "json"
	case ".env":
		return "dotenv"
	}
	return "binary"
}

// SecretsDir is the host's directory of vm's secrets while it runs: a
// tmpfs of its own in its run directory, root's only (0700), so that no
// user of the host reaches a secret whatever its owner in the guest.
func (vm *VM) SecretsDir() string { return filepath.Join(vm.RunDir, "secrets") }

// SecretsShare is the directory in SecretsDir the VM's "secrets" share
// serves read-only: open to the guest's users (0755), each secret then
// readable by its owner there.
func (vm *VM) SecretsShare() string { return filepath.Join(vm.SecretsDir(), "guest") }

// DefaultAgeKey is where the host's age key for sops is, unless
// $SOPS_AGE_KEY_FILE names another.
const DefaultAgeKey = "/etc/microvm/age.key"
