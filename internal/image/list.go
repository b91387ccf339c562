package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// Info describes one image.
type Info struct {
	Name    string
	Size    int64     // bytes on disk, each file once however many links it has
	Kernel  string    // the version of its kernel, e.g. 6.1.0-28-cloud-amd64; "" if none is found
	Created time.Time // when it was made: the time its vmlinuz was written, which is never rewritten
	Meta    Meta      // what it was made from
}

// List returns the images under host's state directory, by name.
// Staging directories of builds in progress are left out.
func List(host config.Host) ([]Info, error) {
	entries, err := os.ReadDir(host.ImagesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	var infos []Info
	for _, e := range entries {
		var err error
		name := e.Name()
		if !e.IsDir() || !config.IsImageDir(name) {
			continue
		}
		info := Info{Name: name}
		if fi, err := os.Stat(host.ImageKernel(name)); err == nil {
			info.Created = fi.ModTime()
		}
		if info.Meta, err = ReadMeta(host, name); err != nil {
			return nil, fmt.Errorf("listing images: %w", err)
		}
		if !info.Meta.Made.IsZero() {
			info.Created = info.Meta.Made // a version's kernel may be its base's file
		}
		if lowers, err := Lowers(host, name); err == nil {
			for _, l := range lowers {
				if k, err := kernel.Find(l); err == nil {
					info.Kernel = k.Version
					break
				}
			}
		}
		if info.Size, err = ownSize(host, name, info.Meta); err != nil {
			return nil, fmt.Errorf("listing image %s: %w", name, err)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// Remove deletes the image name. inUse names the VMs of the model whose
// image it is: Remove refuses while there are any, and while the image is
// mounted (a VM that is running but was taken out of the model).
func Remove(host config.Host, name string, inUse []string) error {
	if !config.IsImageDir(name) {
		return fmt.Errorf("%q is not an image name", name)
	}
	dir := host.ImageDir(name)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image %s does not exist", name)
	} else if err != nil {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	switch len(inUse) {
	case 0:
	case 1:
		return fmt.Errorf("image %s is used by %s; change its image or remove it first", name, inUse[0])
	default:
		return fmt.Errorf("image %s is used by %s; change their image or remove them first", name, strings.Join(inUse, ", "))
	}
	if deps := Dependents(host, name); len(deps) > 0 {
		return fmt.Errorf("image %s is the base of %s; remove %s first", name, strings.Join(deps, ", "), map[bool]string{true: "it", false: "them"}[len(deps) == 1])
	}
	// A mount at the image's directory itself is its ZFS dataset; one
	// below it, or at its view, is a VM using it.
	for _, d := range []string{dir, host.ImageView(name)} {
		mounts, err := mountinfo.Under(d)
		if err != nil {
			return fmt.Errorf("removing image %s: %w", name, err)
		}
		mounts = slices.DeleteFunc(mounts, func(p string) bool { return p == dir })
		if len(mounts) > 0 {
			return fmt.Errorf("image %s is mounted at %s; stop the VMs that use it first", name, strings.Join(mounts, ", "))
		}
	}
	if err := storage.For(host).RemoveImage(name); err != nil {
		return err
	}
	// Its initramfs, made when a VM started, goes with it.
	if err := os.Remove(host.ImageInitramfs(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	return nil
}

// ownSize is what the image in dir alone takes on disk: with ZFS its
// dataset's own blocks; with plain directories its files, but the kernel
// files it shares with its base by hard link.
func ownSize(h config.Host, dir string, m Meta) (int64, error) {
	n, err := storage.For(h).ImageSize(dir)
	if err != nil || !m.Layered {
		return n, err
	}
	for _, f := range []func(string) string{h.ImageKernel, h.ImageVmlinux} {
		a, err1 := os.Stat(f(dir))
		b, err2 := os.Stat(f(m.From))
		if err1 == nil && err2 == nil && os.SameFile(a, b) {
			if st, ok := a.Sys().(*syscall.Stat_t); ok {
				n -= st.Blocks * 512
			}
		}
	}
	return n, nil
}
