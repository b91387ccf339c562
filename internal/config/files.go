package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pelletier/go-toml/v2/unstable"
)

// A files table gives a VM ([vm.NAME.files]) or an image
// ([image.NAME.files]) files from the host, by the path they get:
//
//	[vm.web.files]
//	"/etc/nginx/sites-enabled/default" = { source = "files/web/site.conf" }
//	"/var/www/html/index.html" = { content = "<h1>hello</h1>\n", mode = "0644", owner = "www-data" }
//
// source is a file on the host, relative to infra.toml's directory; content
// is the text itself. mode is octal, "0644" by default; owner is "USER",
// "USER:GROUP" or numeric ids, "root" by default, looked up in the guest's
// own /etc/passwd and /etc/group.
//
// A VM's files land in its own /etc and /var (and /root, /home and /srv,
// which live in /var): they are written at every start of the VM, over
// whatever the guest put there (the host wins), and a VM whose files
// changed is restarted by apply. An image's files are copied in when it
// is built.

// File is one entry of a files table.
type File struct {
	Path    string      // where the file goes, absolute and clean
	Source  string      // the host file it comes from (absolute); "" when Content is given
	Content string      // the file's text, when written in infra.toml
	Mode    fs.FileMode // permission bits
	Owner   string      // a user name or a numeric uid
	Group   string      // a group name or a numeric gid; the owner's name by default
	Sum     string      // sha256 of the content, when the file was read
	At      string      // file:line:col of the entry
}

// MaxFileSize bounds a file given in a files table: files are for
// configuration; what is large belongs in an image.
const MaxFileSize = 4 << 20

// Tree splits a VM file's path into the tree of the VM's state it lives in
// (etc or var) and its path inside that tree: /root, /home and /srv are in
// /var in every image.
func (f File) Tree() (tree, rel string) { return GuestTree(f.Path) }

// GuestTree maps an absolute guest path under /etc, /var, /root, /home or
// /srv to the VM's tree that holds it (etc or var) and the path inside
// it; tree is "" for any other path.
func GuestTree(path string) (tree, rel string) {
	first, rest, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch first {
	case "etc", "var":
		return first, rest
	case "root", "home", "srv":
		return "var", strings.TrimSuffix(first+"/"+rest, "/")
	}
	return "", ""
}

// Load reads the file's content from its source or its text.
func (f File) Load() ([]byte, error) {
	if f.Source == "" {
		return []byte(f.Content), nil
	}
	return readSource(f.Source)
}

// readSource reads a source file, refusing one larger than MaxFileSize.
func readSource(path string) ([]byte, error) {
	// Without blocking: a FIFO named here must not hang validate.
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s is larger than %d MiB; files are for configuration, put large ones into an image", path, MaxFileSize>>20)
	}
	return b, nil
}

var fileKeys = []string{"source", "content", "mode", "owner"}

// fileKind says where the files of a table go: into a VM's trees, or into
// an image at build time.
type fileKind int

const (
	vmFile fileKind = iota
	imageFile
)

// files validates a files table (nil when the file has none) whose dotted
// key is key.
func (p *parser) files(raw *rawEntries, key string, kind fileKind) []File {
	if raw == nil {
		return nil
	}
	var out []File
	for _, path := range raw.order {
		r := raw.byName[path]
		at := func(k string) Pos {
			if v, ok := r.vals[k]; ok {
				return v.pos
			}
			return r.at
		}
		f := File{Path: path, Mode: 0o644, Owner: "root", At: fmt.Sprintf("%s:%d:%d", p.file, r.at.Line, r.at.Col)}
		if msg := checkFilePath(path, kind); msg != "" {
			p.errorf(r.at, "%s: %q %s", key, path, msg)
			continue
		}
		src, hasSrc := r.vals["source"]
		text, hasText := r.vals["content"]
		switch {
		case hasSrc && hasText:
			p.errorf(r.at, "%s: %q has both source and content; give one of them", key, path)
			continue
		case !hasSrc && !hasText:
			p.errorf(r.at, "%s: %q has neither source nor content; add source = \"files/...\" (a file beside infra.toml) or content = \"...\"", key, path)
			continue
		case hasText:
			s, ok := p.str(text, fmt.Sprintf("%s: the content of %q", key, path))
			if !ok {
				continue
			}
			if len(s) > MaxFileSize {
				p.errorf(text.pos, "%s: the content of %q is larger than %d MiB; files are for configuration", key, path, MaxFileSize>>20)
				continue
			}
			f.Content = s
			f.Sum = sum([]byte(s))
		default:
			s, ok := p.str(src, fmt.Sprintf("%s: the source of %q", key, path))
			if !ok {
				continue
			}
			if s == "" {
				p.errorf(src.pos, "%s: the source of %q is empty; name a file, relative to %s", key, path, filepath.Base(p.file))
				continue
			}
			f.Source = s
			if !filepath.IsAbs(s) {
				f.Source = filepath.Join(filepath.Dir(p.file), s)
			}
			b, err := readSource(f.Source)
			if err != nil {
				p.errorf(src.pos, "%s: the source of %q: %s", key, path, explainRead(err))
				continue
			}
			f.Sum = sum(b)
		}
		if v, ok := r.vals["mode"]; ok {
			m, msg := parseMode(v)
			if msg != "" {
				p.errorf(at("mode"), "%s: the mode of %q %s", key, path, msg)
				continue
			}
			f.Mode = m
		}
		if v, ok := r.vals["owner"]; ok {
			s, ok := p.str(v, fmt.Sprintf("%s: the owner of %q", key, path))
			if !ok {
				continue
			}
			user, group, msg := parseOwner(s)
			if msg != "" {
				p.errorf(v.pos, "%s: the owner of %q, %q, %s", key, path, s, msg)
				continue
			}
			f.Owner, f.Group = user, group
		}
		if f.Group == "" {
			f.Group = f.Owner
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// managedPaths are the guest files the program writes itself, with the key
// that sets what they hold.
var managedPaths = map[string]string{
	"/etc/hostname":                     "the VM's name",
	"/etc/hosts":                        "the VM's name and address",
	"/etc/resolv.conf":                  "the dns key",
	"/etc/machine-id":                   "a machine ID made once per VM",
	"/etc/ssh/ssh_host_ed25519_key":     "the VM's SSH host key, made once",
	"/etc/ssh/ssh_host_ed25519_key.pub": "the VM's SSH host key, made once",
	"/root/.ssh/authorized_keys":        "the ssh_keys key and the host's admin key",
	"/var/root/.ssh/authorized_keys":    "the ssh_keys key and the host's admin key",
}

// ManagedDir is the directory of the guest's /etc the program keeps for
// itself (run_once's script); no files entry may land in it.
const ManagedDir = "/etc/microvm"

// checkFilePath says what is wrong with the path of a files entry, or "".
func checkFilePath(path string, kind fileKind) string {
	switch {
	case !strings.HasPrefix(path, "/"):
		return "is not an absolute path; write the path the file has in the guest, e.g. \"/etc/app.conf\""
	case filepath.Clean(path) != path || path == "/":
		return fmt.Sprintf("is not a clean path; write %q", filepath.Clean(path))
	case len(path) > 1024:
		return "is too long"
	}
	for _, c := range path {
		if c < ' ' || c == 0x7f {
			return "has a control character"
		}
	}
	if kind == imageFile {
		first, _, _ := strings.Cut(path[1:], "/")
		switch first {
		case "proc", "sys", "dev", "run", "tmp":
			return fmt.Sprintf("is under /%s, which is mounted over at boot; files there never reach a VM", first)
		}
		return ""
	}
	tree, rel := GuestTree(path)
	switch {
	case tree == "":
		return "is not in the VM's own trees; a VM's files go under /etc, /var, /root, /home or /srv (the rest of its root is the shared read-only image: give files there to an [image.NAME] instead)"
	case rel == "" || slices.Contains([]string{"/root", "/home", "/srv", "/var/root", "/var/home", "/var/srv"}, path):
		return "is a directory of the VM; name a file inside it"
	case managedPaths[path] != "":
		return fmt.Sprintf("is written by the program itself, from %s", managedPaths[path])
	case path == ManagedDir || strings.HasPrefix(path, ManagedDir+"/"):
		return fmt.Sprintf("is in %s, which the program keeps for itself (run_once)", ManagedDir)
	}
	return ""
}

// parseMode reads a mode written as an octal string ("0640") or an
// integer (0o640).
func parseMode(v *value) (fs.FileMode, string) {
	var n int64
	var err error
	switch v.kind {
	case unstable.String:
		n, err = strconv.ParseInt(v.str, 8, 32)
	case unstable.Integer:
		var ok bool
		if n, ok = v.asInt(); !ok {
			err = strconv.ErrSyntax
		}
	default:
		return 0, "must be an octal string such as \"0644\", not " + kindName(v.kind)
	}
	if err != nil || n < 0 || n > 0o777 {
		return 0, fmt.Sprintf("%q is not a permission mode; write one in octal, 0000 to 0777, e.g. \"0644\" or \"0600\"", v.str)
	}
	return fs.FileMode(n), ""
}

// parseOwner reads "USER", "USER:GROUP" or numeric ids.
func parseOwner(s string) (user, group, msg string) {
	user, group, _ = strings.Cut(s, ":")
	for _, n := range []string{user, group} {
		if n == "" && n == user {
			return "", "", "has no user; write USER or USER:GROUP, e.g. \"www-data\" or \"root:adm\""
		}
		if n != "" && !isAccount(n) {
			return "", "", "is not a user or group; write USER or USER:GROUP with names or numeric ids, e.g. \"www-data\" or \"33:33\""
		}
	}
	return user, group, ""
}

// isAccount accepts what useradd accepts as a name, or a number.
func isAccount(s string) bool {
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		return true
	}
	if len(s) > 32 || !(s[0] >= 'a' && s[0] <= 'z' || s[0] == '_') {
		return false
	}
	_, bad := badRune(strings.TrimSuffix(s, "$"), "_-")
	return !bad && strings.ToLower(s) == s
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// explainRead turns an error reading a source file into what to do.
func explainRead(err error) string {
	switch {
	case os.IsNotExist(err):
		return err.(*fs.PathError).Path + " does not exist"
	case os.IsPermission(err):
		return err.(*fs.PathError).Path + " cannot be read (permission denied)"
	}
	return err.Error()
}
