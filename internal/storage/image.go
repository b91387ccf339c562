package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Images are made in a staging directory beside the others (package
// image), then moved into place whole, so that an interrupted build leaves
// no image behind. With ZFS, the staging directory is the mount point of
// the image's own dataset, under a name no image has (NAME.new):
//
//	zfs create -o mountpoint=STAGING rpool/microvms/images/debian.new
//	... debootstrap into STAGING ...
//	zfs unmount rpool/microvms/images/debian.new
//	zfs set readonly=on rpool/microvms/images/debian.new
//	zfs rename rpool/microvms/images/debian.new rpool/microvms/images/debian
//	zfs inherit mountpoint rpool/microvms/images/debian
//	zfs mount rpool/microvms/images/debian
//
// The unmount comes first because zfs-fuse refuses to rename a mounted
// dataset ("dataset is busy"), and each step is retried while it says so
// (runUnbusy).

func (d *Dir) CheckImages() error { return nil }

func (d *Dir) StageImage(name, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	return nil
}

func (d *Dir) StageDerived(name, base, dir string) error { return d.StageImage(name, dir) }

func (d *Dir) Layered() bool { return true }

func (d *Dir) ImageSize(name string) (int64, error) { return DiskUsage(d.Host.ImageDir(name)) }

func (d *Dir) CommitImage(name, dir string) error {
	if err := os.Rename(dir, d.Host.ImageDir(name)); err != nil {
		return fmt.Errorf("moving image %s into place: %w", name, err)
	}
	return nil
}

func (d *Dir) DiscardImage(name, dir string) error { return nil }

// RemoveImage moves the image aside first, so that it is gone at once and
// an interrupted removal leaves only a hidden directory behind.
func (d *Dir) RemoveImage(name string) error {
	trash, err := os.MkdirTemp(d.Host.ImagesDir(), "."+name+".rm-")
	if err != nil {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	if err := os.Rename(d.Host.ImageDir(name), filepath.Join(trash, name)); err != nil {
		_ = os.Remove(trash) // empty: the rename that would fill it failed
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	return nil
}

// CheckImages makes sure images go into the images dataset, not into a
// directory that would then stand in the way of the datasets apply makes.
func (z *ZFS) CheckImages() error {
	ds := z.Host.ImagesDataset()
	if !mounted(ds) {
		return fmt.Errorf("dataset %s is not there or not mounted; microvm apply --host-only makes and mounts it (storage = \"zfs\")", ds)
	}
	return nil
}

func (z *ZFS) StageImage(name, dir string) error {
	ds := z.Host.ImageStagingDataset(name)
	if exists(ds) {
		return fmt.Errorf("dataset %s exists: another build of image %s is running, or one was killed; if none is running, remove it with: zfs destroy -r %s", ds, name, ds)
	}
	if _, err := run("zfs", "create", "-o", "mountpoint="+dir, ds); err != nil {
		return fmt.Errorf("creating dataset %s for image %s: %w", ds, name, hint(err))
	}
	return visibleAt(ds, dir)
}

// BaseSnapshot is the snapshot of an image's dataset that the images made
// from it are clones of. zfs destroy refuses to destroy it, or the image,
// while they exist.
const BaseSnapshot = "base"

func (z *ZFS) StageDerived(name, base, dir string) error {
	ds, from := z.Host.ImageStagingDataset(name), z.Host.ImageDataset(base)
	if !exists(from) {
		return fmt.Errorf("image %s has no dataset %s to make %s from; with storage = \"zfs\" an image is made from another only in its own dataset: remove %s and build it again", base, from, name, base)
	}
	if exists(ds) {
		return fmt.Errorf("dataset %s exists: another build of image %s is running, or one was killed; if none is running, remove it with: zfs destroy -r %s", ds, name, ds)
	}
	snap := from + "@" + BaseSnapshot
	if !snapExists(snap) {
		if _, err := run("zfs", "snapshot", snap); err != nil {
			return fmt.Errorf("snapshotting image %s to make %s from it: %w", base, name, hint(err))
		}
	}
	if _, err := run("zfs", "clone", "-o", "mountpoint="+dir, "-o", "readonly=off", snap, ds); err != nil {
		return fmt.Errorf("cloning %s for image %s: %w", snap, name, hint(err))
	}
	return visibleAt(ds, dir)
}

func (z *ZFS) Layered() bool { return false }

func (z *ZFS) ImageSize(name string) (int64, error) {
	ds := z.Host.ImageDataset(name)
	if !exists(ds) { // made before images had datasets
		return DiskUsage(z.Host.ImageDir(name))
	}
	out, err := run("zfs", "get", "-Hp", "-o", "value", "used", ds)
	if err != nil {
		return 0, fmt.Errorf("reading disk use of %s: %w", ds, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading disk use of %s: %q is not a number", ds, out)
	}
	return n, nil
}

func (z *ZFS) CommitImage(name, dir string) error {
	staged, final := z.Host.ImageStagingDataset(name), z.Host.ImageDataset(name)
	for _, args := range [][]string{
		{"unmount", staged},
		{"set", "readonly=on", staged},
		{"rename", staged, final},
		{"inherit", "mountpoint", final},
	} {
		if _, err := runUnbusy("zfs", args...); err != nil {
			return fmt.Errorf("moving image %s into place: %w", name, err)
		}
	}
	if err := (&MountDataset{Name: final}).Apply(); err != nil {
		return fmt.Errorf("moving image %s into place: %w", name, err)
	}
	return nil
}

func (z *ZFS) DiscardImage(name, dir string) error {
	ds := z.Host.ImageStagingDataset(name)
	if !exists(ds) {
		return nil
	}
	return destroy(ds)
}

// RemoveImage destroys the image's dataset. An image with none (made
// before its dataset was, with the files in the images dataset) is
// removed as the dir backend removes it.
func (z *ZFS) RemoveImage(name string) error {
	ds := z.Host.ImageDataset(name)
	if !exists(ds) {
		return (&Dir{Host: z.Host}).RemoveImage(name)
	}
	// Its base snapshot first, which the images made from it need: zfs
	// refuses while they exist (package image removes them first).
	if snap := ds + "@" + BaseSnapshot; snapExists(snap) {
		if _, err := runUnbusy("zfs", "destroy", snap); err != nil {
			return fmt.Errorf("removing image %s: %w", name, err)
		}
	}
	if err := destroy(ds); err != nil {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	// zfs leaves the mount point behind.
	if err := os.Remove(z.Host.ImageDir(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	return nil
}

// destroy unmounts and destroys a dataset without snapshots. The unmount
// comes first, as zfs-fuse may refuse to destroy a mounted dataset.
func destroy(ds string) error {
	if mounted(ds) {
		if _, err := run("zfs", "unmount", ds); err != nil {
			return fmt.Errorf("unmounting %s: %w", ds, err)
		}
	}
	if _, err := runUnbusy("zfs", "destroy", ds); err != nil {
		return fmt.Errorf("destroying %s: %w", ds, err)
	}
	return nil
}

// runUnbusy is run, retried for up to 5 s while zfs says "dataset is
// busy": zfs-fuse says so for a moment after a dataset is unmounted.
func runUnbusy(name string, args ...string) (string, error) {
	for i := 0; ; i++ {
		out, err := run(name, args...)
		if err == nil || i == 20 || !strings.Contains(err.Error(), "is busy") {
			return out, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}
