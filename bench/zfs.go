package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
)

// The ZFS world of the disk benchmark: a pool in a sparse file, on the
// machine's ZFS (zfs-fuse here: test/zfs-fuse.sh start), destroyed at the
// end. Its name is not the tests' (zfstest.PoolPrefix), so neither cleans
// up the other's.
const (
	zfsPool     = "mvbench"
	zfsPoolFile = "/var/cache/microvm-bench/zfs-pool.img"
	zfsState    = "/var/cache/microvm-bench/zfs-state" // the parent dataset's mount point
)

// newPool makes zfsPool, after removing what a killed run left behind.
func newPool() error {
	if exec.Command("zpool", "list", "-H").Run() != nil {
		return fmt.Errorf("no ZFS answers: start zfs-fuse with `test/zfs-fuse.sh start` (apt-get install zfs-fuse), or load kernel ZFS")
	}
	if exec.Command("zpool", "list", "-H", zfsPool).Run() == nil {
		if err := zfstest.Destroy(zfsPool); err != nil {
			return err
		}
	}
	// The pool is gone, so nothing is mounted there: the parent dataset
	// needs an empty mount point.
	if err := os.RemoveAll(zfsState); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(zfsPoolFile), 0o755); err != nil {
		return err
	}
	os.Remove(zfsPoolFile)
	f, err := os.Create(zfsPoolFile)
	if err != nil {
		return err
	}
	f.Close()
	if err := os.Truncate(zfsPoolFile, 4<<30); err != nil {
		return err
	}
	if out, err := exec.Command("zpool", "create", "-m", "none", zfsPool, zfsPoolFile).CombinedOutput(); err != nil {
		return fmt.Errorf("zpool create %s: %s %w", zfsPool, strings.TrimSpace(string(out)), err)
	}
	return nil
}

// importImage makes the image in h's storage from the image directory src
// the way a person would: `microvm image import` of a tarball of its
// root filesystem (with ZFS, into a dataset of its own, read-only).
func importImage(h config.Host, src, name, tmp string) error {
	tarball := filepath.Join(tmp, "rootfs.tar")
	fmt.Printf("importing the image into %s (tar of %s)\n", h.ImageDataset(name), src)
	if out, err := exec.Command("tar", "--create", "--file="+tarball, "--directory="+filepath.Join(src, "rootfs"), "--numeric-owner", ".").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %s %w", out, err)
	}
	defer os.Remove(tarball)
	return image.Import(context.Background(), h, name, tarball, nil, image.Options{Boot: image.BootFiles})
}
