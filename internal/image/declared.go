package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// Images declared in infra.toml ([image.NAME]) are made from another image,
// their base, with packages, files and commands added. Each version lives
// in a directory of its own, STATE_DIR/images/NAME.VERSION, where VERSION
// is a digest of the image's definition and of the exact base it was made
// from: a changed definition, or a rebuilt base, is a new version beside
// the old one. A VM boots the version that was current when it started,
// and keeps it until it restarts; apply removes a version once it is
// neither current nor used by a running VM (Prune).
//
// A version shares its base on disk. With storage = "zfs" it is a clone
// of a snapshot of its base's dataset, so only the blocks it changed are
// its own. With plain directories it is an overlayfs upper layer
// (ImageLayer) over its base's layers: the build mounts an overlay of the
// base with an empty upper directory and runs apt-get in it, so dpkg's
// every change lands in the layer (files replaced by rename, deleted ones
// as whiteouts), and the base's files are never touched. The guests are
// given a read-only overlay of the same layers (Lowers).

// Ref is an image as a VM's image key names it, resolved on the host.
type Ref struct {
	Name    string        // as infra.toml names it
	Decl    *config.Image // its [image.NAME]; nil for a recipe's or an imported image
	Base    *Ref          // what a declared image is made from
	Version string        // of a declared image; "" while its base is not built
	Dir     string        // its directory under STATE_DIR/images: Name, or NAME.VERSION; "" while unknown
}

// Resolve returns the image called name, as the model declares it and the
// host has it now.
func Resolve(in *config.Infra, name string) (*Ref, error) {
	return resolve(in, name, 0)
}

func resolve(in *config.Infra, name string, depth int) (*Ref, error) {
	decl, ok := in.Image(name)
	if !ok {
		return &Ref{Name: name, Dir: name}, nil
	}
	if depth > 100 { // config refuses cycles; this is a bug
		return nil, fmt.Errorf("image %s: its bases go round in a circle", name)
	}
	base, err := resolve(in, decl.From, depth+1)
	if err != nil {
		return nil, err
	}
	r := &Ref{Name: name, Decl: decl, Base: base}
	if !base.Built(in.Host) {
		return r, nil
	}
	id, err := base.identity(in.Host)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "microvm image 1\n%sbase %s\n", decl.Definition(), id)
	r.Version = hex.EncodeToString(h.Sum(nil))[:config.VersionLen]
	r.Dir = config.VersionDir(name, r.Version)
	return r, nil
}

// Built reports whether the image is on the host, complete.
func (r *Ref) Built(h config.Host) bool {
	if r.Dir == "" {
		return false
	}
	_, err := os.Stat(h.ImageVmlinux(r.Dir))
	return err == nil
}

// identity names the exact tree of a built image, for the versions of the
// images made from it: a rebuilt recipe image is another base.
func (r *Ref) identity(h config.Host) (string, error) {
	if r.Version != "" {
		return "image " + r.Dir, nil
	}
	m, err := ReadMeta(h, r.Dir)
	if err != nil {
		return "", err
	}
	made := m.Made
	if made.IsZero() { // made before images had metadata
		if fi, err := os.Stat(h.ImageKernel(r.Dir)); err == nil {
			made = fi.ModTime()
		}
	}
	return fmt.Sprintf("%s, %s, made %s", r.Dir, m, made.UTC().Format(time.RFC3339Nano)), nil
}

// Lowers returns the directories whose union is the root filesystem of the
// image in dir, uppermost first: its own rootfs, or, for a layered image,
// its layer and then its base's, down to a rootfs. It reads the images'
// metadata, so a version keeps the base it was made from.
func Lowers(h config.Host, dir string) ([]string, error) {
	var out []string
	for range 100 {
		m, err := ReadMeta(h, dir)
		if err != nil {
			return nil, err
		}
		if !m.Layered {
			return append(out, h.ImageRootfs(dir)), nil
		}
		if m.From == "" {
			return nil, fmt.Errorf("image %s is a layer without a base in its metadata; remove it (microvm image rm %s)", dir, dir)
		}
		out = append(out, h.ImageLayer(dir))
		dir = m.From
	}
	return nil, fmt.Errorf("image %s: more than 100 layers", dir)
}

// ToBuild lists, base first, the declared images of in that are not built
// as the file declares them, with why each must be built: the images apply
// builds before it starts the VMs.
func ToBuild(in *config.Infra) ([]Missing, error) {
	var out []Missing
	seen := map[string]bool{}
	var add func(name string) error
	add = func(name string) error {
		r, err := Resolve(in, name)
		if err != nil || r.Decl == nil || seen[name] {
			return err
		}
		seen[name] = true
		if err := add(r.Base.Name); err != nil {
			return err
		}
		if !r.Built(in.Host) {
			out = append(out, Missing{Name: name, Summary: r.Decl.Summary(), Why: why(in.Host, r)})
		}
		return nil
	}
	for _, img := range in.Images {
		if err := add(img.Name); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Missing is a declared image to build, as plan shows it.
type Missing struct {
	Name    string
	Summary string // what it is made of: "debian + nginx-light"
	Why     string // "new", "packages + redis-tools", "debian rebuilt"
}

// why says why r must be built: what differs from its newest version on
// the host, or its base.
func why(h config.Host, r *Ref) string {
	if r.Base.Decl != nil && !r.Base.Built(h) {
		return r.Base.Name + " changes"
	}
	if !r.Base.Built(h) {
		return r.Base.Name + " is not built yet"
	}
	prev, ok := newest(h, r.Name)
	if !ok {
		return "new"
	}
	if d := describeChange(prev.Definition, r.Decl.Definition()); d != "" {
		return d
	}
	return "its base " + r.Base.Name + " was rebuilt"
}

// newest returns the metadata of the newest version of the image name on
// the host.
func newest(h config.Host, name string) (Meta, bool) {
	entries, err := os.ReadDir(h.ImagesDir())
	if err != nil {
		return Meta{}, false
	}
	var best Meta
	found := false
	for _, e := range entries {
		n, v, ok := config.SplitImageDir(e.Name())
		if !ok || n != name || v == "" {
			continue
		}
		m, err := ReadMeta(h, e.Name())
		if err == nil && (!found || m.Made.After(best.Made)) {
			best, found = m, true
		}
	}
	return best, found
}

// describeChange says how an image's definition changed, for a person:
// "packages + redis-tools - curl, files changed, commands changed".
func describeChange(was, now string) string {
	if was == now {
		return ""
	}
	lines := func(s, prefix string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, prefix) {
				out = append(out, l)
			}
		}
		return out
	}
	var parts []string
	if lines(was, "from ")[0] != lines(now, "from ")[0] {
		parts = append(parts, "base "+strings.TrimPrefix(lines(now, "from ")[0], "from "))
	}
	oldPkgs, newPkgs := lines(was, "package "), lines(now, "package ")
	var pkgs []string
	for _, p := range newPkgs {
		if !slices.Contains(oldPkgs, p) {
			pkgs = append(pkgs, "+ "+unquote(strings.TrimPrefix(p, "package ")))
		}
	}
	for _, p := range oldPkgs {
		if !slices.Contains(newPkgs, p) {
			pkgs = append(pkgs, "- "+unquote(strings.TrimPrefix(p, "package ")))
		}
	}
	if len(pkgs) > 0 {
		parts = append(parts, "packages "+strings.Join(pkgs, " "))
	}
	if !slices.Equal(lines(was, "file "), lines(now, "file ")) {
		parts = append(parts, "files changed")
	}
	if !slices.Equal(lines(was, "run "), lines(now, "run ")) {
		parts = append(parts, "commands changed")
	}
	if len(parts) == 0 {
		return "definition changed"
	}
	return strings.Join(parts, ", ")
}

func unquote(s string) string { return strings.Trim(s, `"`) }

// BuildDeclared makes the current version of the declared image name, and
// first its base, if that is missing too (a recipe's image included). An
// image whose current version is on the host is left as it is.
func BuildDeclared(ctx context.Context, in *config.Infra, name string, progress io.Writer, opt Options) error {
	h := in.Host
	r, err := Resolve(in, name)
	if err != nil {
		return err
	}
	if r.Decl == nil {
		return fmt.Errorf("image %s is not declared in %s; add an [image.%s] table, or build a recipe's image (%s)", name, in.File, name, strings.Join(RecipeNames(), ", "))
	}
	if r.Built(h) {
		phasef(progress, "image %s is current (%s)", name, r.Dir)
		return nil
	}
	switch {
	case r.Base.Decl != nil:
		err = BuildDeclared(ctx, in, r.Base.Name, progress, opt)
	case !r.Base.Built(h):
		if _, rerr := FindRecipe(r.Base.Name); rerr != nil {
			return fmt.Errorf("image %s is made from %s, which is not on this host and has no recipe; import it first (microvm image import %s ROOTFS.tar)", name, r.Base.Name, r.Base.Name)
		}
		err = Build(ctx, h, r.Base.Name, progress, opt)
	}
	if err != nil {
		return err
	}
	if r, err = Resolve(in, name); err != nil {
		return err
	}
	return derive(ctx, h, r, progress, opt)
}

// derive builds the version r.Dir of a declared image on its built base.
func derive(ctx context.Context, h config.Host, r *Ref, progress io.Writer, opt Options) (err error) {
	start := time.Now()
	store := storage.For(h)
	if err := store.CheckImages(); err != nil {
		return err
	}
	if err := os.MkdirAll(h.ImagesDir(), 0o755); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("building an image needs root: apt-get installs packages as root")
	}
	unlock, err := lockBuilds(h)
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkNew(h, r.Dir); err != nil {
		return err
	}
	phasef(progress, "image %s: %s, as %s", r.Name, r.Decl.Summary(), r.Dir)

	tmp, err := os.MkdirTemp(h.ImagesDir(), "."+r.Dir+".new-")
	if err != nil {
		return fmt.Errorf("creating staging directory: %w", err)
	}
	defer func() { err = errors.Join(err, removeStaging(tmp)) }()
	staged := h
	staged.StateDir = tmp
	dir := staged.ImageDir(r.Dir)
	if err := store.StageDerived(r.Dir, r.Base.Dir, dir); err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			err = errors.Join(err, store.DiscardImage(r.Dir, dir))
		}
	}()

	// The tree to build in: the clone's rootfs, or an overlay of the
	// base with the new layer on top, which goes (with overlayfs' work
	// directory) before the image is moved into place.
	root := staged.ImageRootfs(r.Dir)
	layered := store.Layered()
	unmount := func() error { return nil }
	if layered {
		if unmount, err = mountBuild(h, r, staged, root, filepath.Join(tmp, "work")); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, unmount()) }()
	}

	if err := install(ctx, h, r.Decl, root, progress); err != nil {
		return fmt.Errorf("building image %s: %w", r.Name, err)
	}
	phasef(progress, "preparing the tree for sharing")
	if err := postDerived(root); err != nil {
		return fmt.Errorf("building image %s: %w", r.Name, err)
	}
	phasef(progress, "the kernel")
	if err := deriveKernel(root, h, r.Base.Dir, staged, r.Dir, opt.Boot); err != nil {
		return fmt.Errorf("building image %s: %w", r.Name, err)
	}
	m := Meta{Image: r.Name, From: r.Base.Dir, Layered: layered, Summary: r.Decl.Summary(), Definition: r.Decl.Definition(), Made: time.Now().UTC()}
	if err := writeMeta(staged, r.Dir, m); err != nil {
		return err
	}
	if err := unmount(); err != nil {
		return err
	}
	if err := store.CommitImage(r.Dir, dir); err != nil {
		return err
	}
	committed = true
	phasef(progress, "image %s is ready in %s (%s)", r.Name, h.ImageDir(r.Dir), time.Since(start).Round(time.Second))
	return nil
}

// mountBuild mounts at root an overlay of r's base with staged's new
// layer on top, for the build to write to, and returns what unmounts it
// and removes root and work, once however often it is called.
func mountBuild(h config.Host, r *Ref, staged config.Host, root, work string) (func() error, error) {
	lowers, err := Lowers(h, r.Base.Dir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{staged.ImageLayer(r.Dir), work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), staged.ImageLayer(r.Dir), work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mounting an overlay of %s to build %s in: %w", r.Base.Dir, r.Dir, err)
	}
	mounted := true
	return func() error {
		if !mounted {
			return nil
		}
		if err := unix.Unmount(root, 0); err != nil {
			return fmt.Errorf("unmounting %s: %w", root, err)
		}
		mounted = false
		// overlayfs leaves a directory of mode 000 in work.
		return errors.Join(os.RemoveAll(work), os.Remove(root))
	}, nil
}

// linkOrCopy hard-links src to dst, or copies it where they are on
// different mounts (a base image mounted from elsewhere).
func linkOrCopy(src, dst string) error {
	err := os.Link(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// deriveKernel gives the new image its kernel files: its base's, as hard
// links, when the packages did not change the kernel (with ZFS, the clone
// has them already), or new ones.
func deriveKernel(root string, h config.Host, baseDir string, staged config.Host, dir string, boot func(config.Host, string) error) error {
	k, err := kernel.Find(root)
	if err != nil {
		return err
	}
	want, err := os.ReadFile(k.Image)
	if err != nil {
		return err
	}
	if have, err := os.ReadFile(h.ImageKernel(baseDir)); err == nil && bytes.Equal(have, want) {
		for _, f := range []func(string) string{h.ImageKernel, h.ImageVmlinux} {
			src, dst := f(baseDir), f(dir)
			dst = filepath.Join(staged.ImageDir(dir), filepath.Base(dst))
			if _, err := os.Lstat(dst); err == nil {
				continue // in the clone already
			}
			if err := linkOrCopy(src, dst); err != nil {
				return fmt.Errorf("linking the kernel: %w", err)
			}
		}
		return nil
	}
	for _, f := range []string{staged.ImageKernel(dir), staged.ImageVmlinux(dir)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if _, err := copyKernel(root, staged.ImageKernel(dir)); err != nil {
		return err
	}
	if boot != nil {
		return boot(staged, dir)
	}
	return nil
}

// postDerived undoes what installing packages left that a shared image
// must not have: SSH host keys (openssh-server makes them), the build
// host's DNS, apt's caches, an initrd.
func postDerived(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, step := range []func(*os.Root) error{removeHostKeys, cleanApt, removeInitrd} {
		if err := step(root); err != nil {
			return err
		}
	}
	return removeIfExists(root, "etc/resolv.conf")
}

// lockBuilds serializes the builds of declared images on a host: they
// share apt's package cache, which apt locks without waiting.
func lockBuilds(h config.Host) (unlock func(), err error) {
	if err := os.MkdirAll(h.PackageCache(), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(h.PackageCache(), "build.lock"), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Old returns the versions of declared images on the host that are not
// current: of images the file no longer declares, or whose definition or
// base changed since. A VM may still boot one (runner.ReleaseUnused says
// which); Prunable says which can go.
func Old(in *config.Infra) ([]string, error) {
	current := map[string]bool{}
	for _, img := range in.Images {
		r, err := Resolve(in, img.Name)
		if err != nil {
			return nil, err
		}
		for ; r != nil; r = r.Base {
			current[r.Dir] = true
		}
	}
	entries, err := os.ReadDir(in.Host.ImagesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if _, v, ok := config.SplitImageDir(e.Name()); ok && v != "" && e.IsDir() && !current[e.Name()] {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Prunable returns, of the old versions, those that can be removed: not in
// use, and not the base of an image that stays. An image comes before its
// base, the order to remove them in.
func Prunable(h config.Host, old []string, inUse map[string][]string) []string {
	stays := map[string]bool{}
	var keep func(dir string)
	keep = func(dir string) {
		for n := 0; dir != "" && !stays[dir] && n < 100; n++ {
			stays[dir] = true
			m, err := ReadMeta(h, dir)
			if err != nil {
				return
			}
			dir = m.From
		}
	}
	entries, _ := os.ReadDir(h.ImagesDir())
	for _, e := range entries {
		if config.IsImageDir(e.Name()) && (!slices.Contains(old, e.Name()) || len(inUse[e.Name()]) > 0) {
			keep(e.Name())
		}
	}
	var out []string
	for _, d := range old {
		if !stays[d] {
			out = append(out, d)
		}
	}
	// Made later first: a version is made after its base.
	slices.SortFunc(out, func(a, b string) int {
		ma, _ := ReadMeta(h, a)
		mb, _ := ReadMeta(h, b)
		return mb.Made.Compare(ma.Made)
	})
	return out
}

// Dependents lists the images made from the image in dir.
func Dependents(h config.Host, dir string) []string {
	var out []string
	entries, _ := os.ReadDir(h.ImagesDir())
	for _, e := range entries {
		if !config.IsImageDir(e.Name()) {
			continue
		}
		if m, err := ReadMeta(h, e.Name()); err == nil && m.From == dir {
			out = append(out, e.Name())
		}
	}
	return out
}

// OpenBuildLog opens, emptied, the log of a build of the image name
// (config.Host.ImageBuildLog), in RUN_DIR where only root writes.
func OpenBuildLog(h config.Host, name string) (*os.File, error) {
	path := h.ImageBuildLog(name)
	dir, err := safedir.OpenPrivateAll(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	log, err := dir.OpenAppend(filepath.Base(path), 0o644)
	if err != nil {
		return nil, err
	}
	if err := log.Truncate(0); err != nil { // this build's log only
		log.Close()
		return nil, err
	}
	return log, nil
}
