package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// [image.NAME] declares an image made from another one: a recipe (the
// images `microvm image build` makes, such as "debian"), or another
// [image.NAME] of the file. It adds Debian packages, files and build
// commands on top; the VMs that name it in their image key boot it.
//
//	[image.web]
//	from = "debian"                               # a recipe or another [image.NAME]; default "debian"
//	packages = ["nginx-light", "fcgiwrap"]        # installed with apt from the recipe's mirror, with their dependencies
//	run = ["ln -s /usr/share/doc /srv/doc"]       # shell commands run in the image's root, at build time
//	[image.web.files]
//	"/usr/local/bin/page" = { source = "files/page.sh", mode = "0755" }
//
// Package image builds it, before any VM that uses it starts; an image
// whose definition (or whose base) changed is built again as a new
// version beside the old one, which the VMs that booted it keep until
// they restart.

// Image is one [image.NAME] table.
type Image struct {
	Name     string
	From     string   // a recipe (Recipes) or another declared image
	Packages []string // Debian packages, as apt-get install takes them
	Run      []string // shell commands, run in order with /bin/sh -ec in the image's root
	Files    []File   // copied into the image, sorted by path
}

// Recipes are the images `microvm image build` makes from a recipe of
// package image (a test there keeps the two lists equal). No [image.NAME]
// may take one of their names.
var Recipes = []string{"debian", "debian-full"}

// Image returns the declared image called name.
func (in *Infra) Image(name string) (*Image, bool) {
	for i := range in.Images {
		if in.Images[i].Name == name {
			return &in.Images[i], true
		}
	}
	return nil, false
}

// Chain returns the declared images name is made from, name first, down to
// the first one made from a recipe (or an image the file does not
// declare); empty if name is not declared.
func (in *Infra) Chain(name string) []*Image {
	var out []*Image
	for {
		img, ok := in.Image(name)
		if !ok || slices.Contains(out, img) {
			return out
		}
		out = append(out, img)
		name = img.From
	}
}

// Definition is the image's definition as canonical text: what it is made
// of, without where its base comes from. Package image digests it, with
// its base's identity, into the image's version.
func (img *Image) Definition() string {
	var b strings.Builder
	fmt.Fprintf(&b, "from %q\n", img.From)
	for _, p := range img.Packages {
		fmt.Fprintf(&b, "package %q\n", p)
	}
	for _, f := range img.Files {
		fmt.Fprintf(&b, "file %q %s %s:%s %s\n", f.Path, f.Mode, f.Owner, f.Group, f.Sum)
	}
	for _, r := range img.Run {
		fmt.Fprintf(&b, "run %q\n", r)
	}
	return b.String()
}

// Summary says what the image adds to its base, for plan: "debian +
// nginx-light fcgiwrap, 1 file, 1 command".
func (img *Image) Summary() string {
	s := img.From
	if len(img.Packages) > 0 {
		s += " + " + strings.Join(img.Packages, " ")
	}
	var extra []string
	if n := len(img.Files); n > 0 {
		extra = append(extra, plural(n, "file"))
	}
	if n := len(img.Run); n > 0 {
		extra = append(extra, plural(n, "command"))
	}
	if len(extra) > 0 {
		s += ", " + strings.Join(extra, ", ")
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

var imageKeys = []string{"from", "packages", "run", "files"}

// packageName is what apt-get install takes: a Debian package name
// (Debian policy 5.6.1), optionally with =VERSION or /RELEASE.
var packageName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+|/[a-z0-9-]+)?$`)

// images reads the [image.NAME] tables. A VM's image key may name one of
// them, a recipe, or an image made otherwise (imported), which only plan
// can check.
func (p *parser) images() {
	declared := map[string]bool{}
	for _, r := range p.imgs {
		declared[r.name] = true
	}
	for _, r := range p.imgs {
		img := Image{Name: r.name, From: DefaultImage}
		switch {
		case !isName(r.name):
			p.errorf(r.at, "image name %q is invalid; use lowercase letters, digits and '-', starting with a letter, e.g. %q", r.name, fixName(r.name))
			continue
		case slices.Contains(Recipes, r.name):
			p.errorf(r.at, "[image.%s]: %s is the name of a recipe (microvm image build %s); call your image something else, e.g. [image.%s-custom]", r.name, r.name, r.name, r.name)
			continue
		}
		key := "image." + r.name
		if v, ok := r.vals["from"]; ok {
			if s, ok := p.str(v, key+".from"); ok {
				switch {
				case s == r.name:
					p.errorf(v.pos, "%s.from = %q: an image cannot be made from itself; name a recipe (%s) or another [image.NAME]", key, s, quoted(Recipes, " or "))
				case !isName(s):
					p.errorf(v.pos, "%s.from = %q is not an image name; name a recipe (%s) or another [image.NAME]", key, s, quoted(Recipes, " or "))
				}
				img.From = s
			}
		}
		img.Packages = p.stringList(r.vals["packages"], key+".packages", `e.g. packages = ["nginx-light", "redis-tools"]`, func(s string) string {
			if !packageName.MatchString(s) {
				return "is not a Debian package name; use the name apt-get install takes, e.g. \"nginx-light\" or \"redis-server\""
			}
			return ""
		})
		img.Run = p.stringList(r.vals["run"], key+".run", `e.g. run = ["systemctl enable fcgiwrap.socket"]`, func(s string) string {
			if strings.TrimSpace(s) == "" {
				return "is empty; write a shell command, or remove it"
			}
			return ""
		})
		img.Files = p.files(r.subs["files"], key+".files", imageFile)
		p.in.Images = append(p.in.Images, img)
	}
	p.imageCycles(declared)
	slices.SortFunc(p.in.Images, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
}

// imageCycles rejects images made from each other, at the first of them.
func (p *parser) imageCycles(declared map[string]bool) {
	for _, img := range p.in.Images {
		if img.From == img.Name {
			continue // reported at its from
		}
		seen := []string{img.Name}
		for from := img.From; declared[from]; {
			if from == img.Name {
				p.errorf(p.in.keys["image."+img.Name+".from"], "image %s is made from itself through %s; one of them must start from a recipe (%s)", img.Name, strings.Join(seen, " <- "), quoted(Recipes, " or "))
				break
			}
			if slices.Contains(seen, from) {
				break // a cycle of others, reported at its own images
			}
			seen = append(seen, from)
			next, ok := p.in.Image(from)
			if !ok {
				break // invalid, reported where it is declared
			}
			from = next.From
		}
	}
}

// stringList reads a list of strings, each checked by check (which
// returns what is wrong, or ""). v is nil when the key is not written.
func (p *parser) stringList(v *value, key, example string, check func(string) string) []string {
	if v == nil {
		return nil
	}
	if v.kind != unstable.Array {
		p.errorf(v.pos, "%s must be a list of strings, %s", key, example)
		return nil
	}
	var out []string
	for i, s := range v.list {
		if msg := check(s); msg != "" {
			p.errorf(v.at[i], "%s: %q %s", key, s, msg)
			continue
		}
		out = append(out, s)
	}
	return out
}

// VersionLen is the length of a declared image's version: hex digits of a
// digest of its definition and its base (package image).
const VersionLen = 16

// VersionDir names the directory of one version of a declared image under
// STATE_DIR/images: NAME.VERSION, which no image name can be (image names
// have no dot), so versions and the images of recipes never collide.
func VersionDir(name, version string) string { return name + "." + version }

// SplitImageDir splits the name of an image's directory into the image's
// name and its version ("" for the image of a recipe or an import); ok is
// false for anything else (a staging directory, a cache).
func SplitImageDir(dir string) (name, version string, ok bool) {
	name, version, versioned := strings.Cut(dir, ".")
	if !isName(name) {
		return "", "", false
	}
	if !versioned {
		return name, "", true
	}
	if len(version) != VersionLen || strings.Trim(version, "0123456789abcdef") != "" {
		return "", "", false
	}
	return name, version, true
}

// IsImageDir reports whether dir names an image's directory: an image's
// name, or a version of a declared image.
func IsImageDir(dir string) bool {
	_, _, ok := SplitImageDir(dir)
	return ok
}
