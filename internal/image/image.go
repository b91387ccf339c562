// Package image makes, lists and removes images: the root filesystems every
// VM boots, shared read-only. An image lives under STATE_DIR/images/NAME
// (the layout is derived in package config) and is immutable once made: to
// change one, remove it and make it again.
//
// Build debootstraps Debian 12; Import unpacks any root filesystem tarball.
// Both then prepare the tree for sharing: per-VM identity (SSH host keys,
// machine ID) is removed, /root, /home and /srv become symlinks into /var,
// which is each VM's own, /tmp becomes a tmpfs, and the kernel is copied
// out next to the tree. An image is made in a staging directory beside the final
// one and moved into place only when complete, so a failed or interrupted
// build leaves no image behind. With storage = "zfs", each image is a
// dataset of its own, read-only once in place.
package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// What Build installs.
const (
	DefaultMirror = "http://deb.debian.org/debian"
	Suite         = "bookworm" // Debian 12
)

// Options adjust how an image is made.
type Options struct {
	// Mirror is the Debian mirror Build installs from; DefaultMirror if
	// empty. Import ignores it.
	Mirror string

	// Boot derives the files a VMM boots (host.ImageVmlinux(name) and
	// host.ImageInitramfs(name)) from host.ImageRootfs(name) and
	// host.ImageKernel(name), which are in place when it is called. It
	// is given the staging layout, not the final one, so an image is
	// never visible without its boot files. Package kernel provides it;
	// nil leaves the boot files to a later step.
	Boot func(host config.Host, name string) error
}

// Build makes the image name by following its recipe (Recipes):
// debootstrapping Debian 12 from opt.Mirror, then the recipe's own changes.
// debootstrap's output and the names of the phases go to progress (nil
// discards them). It needs root and the debootstrap command, and refuses to
// replace an existing image.
func Build(ctx context.Context, host config.Host, name string, progress io.Writer, opt Options) error {
	if err := checkNew(host, name); err != nil {
		return err
	}
	r, err := FindRecipe(name)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("building an image needs root: debootstrap installs packages as root")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return errors.New("building an image needs debootstrap: apt-get install debootstrap")
	}
	mirror := opt.Mirror
	if mirror == "" {
		mirror = DefaultMirror
	}
	meta := Meta{Recipe: r.Name, Version: r.Version}
	return stage(host, name, progress, opt.Boot, meta, func(rootfs string) error {
		phasef(progress, "debootstrap %s from %s", Suite, mirror)
		err := runTool(ctx, progress, "debootstrap", "--variant=minbase",
			"--include="+strings.Join(r.Packages, ","), Suite, rootfs, mirror)
		if err != nil {
			return fmt.Errorf("debootstrap: %w%s", err, logTail(filepath.Join(rootfs, "debootstrap", "debootstrap.log")))
		}
		if r.Tune == nil {
			return nil
		}
		phasef(progress, "recipe %s v%d", r.Name, r.Version)
		root, err := os.OpenRoot(rootfs)
		if err != nil {
			return err
		}
		defer root.Close()
		if err := r.Tune(root); err != nil {
			return fmt.Errorf("recipe %s: %w", r.Name, err)
		}
		return nil
	})
}

// Import makes the image name from a root filesystem tarball, plain or
// compressed with gzip, xz or zstd. The tree must hold a kernel
// (boot/vmlinuz-VERSION with lib/modules/VERSION), since VMs boot the
// image's own kernel.
//
// It unpacks with GNU tar, which keeps what a root filesystem needs and Go's
// archive/tar leaves to its caller: owners, modes, hard links, device nodes,
// ACLs and extended attributes (file capabilities, such as ping's, are
// xattrs), and it refuses members that would land outside the directory.
// Like Build, it needs root (to keep owners and make devices) and refuses to
// replace an existing image.
func Import(ctx context.Context, host config.Host, name, tarPath string, progress io.Writer, opt Options) error {
	if err := checkNew(host, name); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("importing an image needs root: it keeps the files' owners and device nodes")
	}
	if _, err := exec.LookPath("tar"); err != nil {
		return errors.New("importing an image needs tar: apt-get install tar")
	}
	abs, err := filepath.Abs(tarPath)
	if err != nil {
		return fmt.Errorf("importing %s: %w", tarPath, err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("importing image: %w", err)
	}
	return stage(host, name, progress, opt.Boot, Meta{Source: abs}, func(rootfs string) error {
		phasef(progress, "unpacking %s", abs)
		// tar finds the compression itself when it reads a file.
		err := runTool(ctx, progress, "tar", "--extract", "--file="+abs, "--directory="+rootfs,
			"--numeric-owner", "--same-owner", "--same-permissions",
			"--acls", "--xattrs", "--xattrs-include=*")
		if err != nil {
			return fmt.Errorf("unpacking %s: %w", abs, err)
		}
		for _, dir := range []string{"etc", "var"} {
			if fi, err := os.Lstat(filepath.Join(rootfs, dir)); err != nil || !fi.IsDir() {
				return fmt.Errorf("importing %s: it has no /%s directory; is it a root filesystem?", abs, dir)
			}
		}
		return nil
	})
}

// CheckName refuses what cannot name an image.
func CheckName(name string) error {
	if !config.IsImageName(name) {
		return fmt.Errorf("%q is not an image name; use lowercase letters, digits and '-', e.g. \"debian\"", name)
	}
	return nil
}

// checkNew returns an error unless name is a valid image name that no image
// has yet.
func checkNew(host config.Host, name string) error {
	if _, v, _ := config.SplitImageDir(name); v == "" {
		if err := CheckName(name); err != nil {
			return err
		}
	}
	if _, err := os.Lstat(host.ImageDir(name)); err == nil {
		return fmt.Errorf("image %s exists; remove it with `microvm image rm %s` first", name, name)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checking image %s: %w", name, err)
	}
	return nil
}

// stage makes an image in a staging directory and moves it into place
// (package storage: with ZFS, the image is a dataset of its own, read-only
// once in place). fill writes the root filesystem into the (empty)
// directory it is given.
//
// meta is recorded in the image (ImageMeta).
//
// The staging directory is a state directory of its own, next to the real
// images so that the final rename stays on one filesystem: the staged image
// is laid out by the same config methods as the final one, and its boot
// files (opt.Boot) are made there.
func stage(host config.Host, name string, progress io.Writer, boot func(config.Host, string) error, meta Meta, fill func(rootfs string) error) (err error) {
	start := time.Now()
	store := storage.For(host)
	if err := store.CheckImages(); err != nil {
		return err
	}
	images := host.ImagesDir()
	if err := os.MkdirAll(images, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", images, err)
	}
	tmp, err := os.MkdirTemp(images, "."+name+".new-")
	if err != nil {
		return fmt.Errorf("creating staging directory: %w", err)
	}
	defer func() { err = errors.Join(err, removeStaging(tmp)) }()

	staged := host
	staged.StateDir = tmp
	if err := store.StageImage(name, staged.ImageDir(name)); err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			err = errors.Join(err, store.DiscardImage(name, staged.ImageDir(name)))
		}
	}()
	rootfs := staged.ImageRootfs(name)
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", rootfs, err)
	}
	if err := os.Chmod(rootfs, 0o755); err != nil { // the guest's /, whatever the umask
		return fmt.Errorf("creating %s: %w", rootfs, err)
	}
	if err := fill(rootfs); err != nil {
		return err
	}

	phasef(progress, "preparing the tree for sharing")
	if err := postProcess(rootfs); err != nil {
		return fmt.Errorf("preparing image %s: %w", name, err)
	}
	phasef(progress, "copying the kernel")
	version, err := copyKernel(rootfs, staged.ImageKernel(name))
	if err != nil {
		return fmt.Errorf("preparing image %s: %w", name, err)
	}
	fmt.Fprintf(orDiscard(progress), "kernel %s\n", version)
	if boot != nil {
		phasef(progress, "making the boot files")
		if err := boot(staged, name); err != nil {
			return fmt.Errorf("preparing image %s: %w", name, err)
		}
	}

	meta.Made = time.Now().UTC()
	if err := writeMeta(staged, name, meta); err != nil {
		return fmt.Errorf("preparing image %s: %w", name, err)
	}

	// Checked again: another build of the same name may have finished
	// meanwhile. (rename(2) also refuses to replace a non-empty directory.)
	if err := checkNew(host, name); err != nil {
		return err
	}
	if err := store.CommitImage(name, staged.ImageDir(name)); err != nil {
		return err
	}
	committed = true
	phasef(progress, "image %s is ready in %s (%s)", name, host.ImageDir(name), time.Since(start).Round(time.Second))
	return nil
}

// removeStaging deletes a staging directory, unless something is mounted
// under it: debootstrap mounts /proc and /sys in its target, and a leftover
// bind mount of the host's /dev must never be deleted through.
func removeStaging(dir string) error {
	mounts, err := mountinfo.Under(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("left %s in place: %s still mounted under it (umount them, then remove it)", dir, strings.Join(mounts, ", "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing staging directory: %w", err)
	}
	return nil
}

// copyKernel copies the newest kernel of rootfs to dst and returns its
// version. It checks that the kernel's modules are there with their
// modules.dep, which the initramfs is made from.
func copyKernel(rootfs, dst string) (string, error) {
	k, err := kernel.Find(rootfs)
	if err != nil {
		return "", fmt.Errorf("%w; VMs boot the image's own kernel, so it needs one (on Debian, linux-image-cloud-amd64)", err)
	}
	// Read through os.Root: in an imported tree, boot/vmlinuz-* may be a
	// symlink, and it must not lead to a file of the host.
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return "", fmt.Errorf("copying kernel: %w", err)
	}
	defer root.Close()
	// k's paths were found under rootfs: Rel cannot fail.
	modDep, _ := filepath.Rel(rootfs, filepath.Join(k.Modules, "modules.dep"))
	if _, err := root.Stat(modDep); err != nil {
		return "", fmt.Errorf("kernel %s has no modules.dep (run depmod %s in the image): %w", k.Version, k.Version, err)
	}
	rel, _ := filepath.Rel(rootfs, k.Image)
	src, err := root.Open(rel)
	if err != nil {
		return "", fmt.Errorf("copying kernel: %w", err)
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return "", fmt.Errorf("copying kernel: %w", err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return "", fmt.Errorf("copying kernel: %w", err)
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("copying kernel: %w", err)
	}
	return k.Version, nil
}

// runTool runs a command with its output going to progress, in a mount namespace
// of its own and its own process group. The namespace takes the tool's
// mounts (debootstrap mounts /proc and /sys in its target) with it when the
// tool ends, even if it is killed; the process group lets a cancelled
// context kill the tool's children too (dpkg, maintainer scripts). A
// failure's error ends with the last lines of the output, which say why.
func runTool(ctx context.Context, progress io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var tail lastLines
	cmd.Stdout = io.MultiWriter(orDiscard(progress), &tail)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		if out := tail.String(); out != "" {
			return fmt.Errorf("%w:\n%s", err, out)
		}
		return err
	}
	return nil
}

// lastLines keeps the last few lines written to it.
type lastLines struct{ lines []string }

func (l *lastLines) Write(p []byte) (int, error) {
	l.lines = append(l.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	if len(l.lines) > 10 {
		l.lines = l.lines[len(l.lines)-10:]
	}
	return len(p), nil
}

func (l *lastLines) String() string { return strings.Join(l.lines, "\n") }

// logTail returns the last lines of a tool's log file, to explain a
// failure, or "" if there is no such file.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "; the end of " + filepath.Base(path) + ":\n" + strings.Join(lines, "\n")
}

func phasef(w io.Writer, format string, args ...any) {
	fmt.Fprintf(orDiscard(w), "==> "+format+"\n", args...)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// BootFiles derives what the VMMs boot from a new image: the uncompressed
// kernel, with its PVH entry point. (The initramfs is made when a VM
// starts, since it also holds the init program of the running microvm; see
// kernel.UpdateInitramfs.) It is the Boot hook of every real build.
func BootFiles(h config.Host, name string) error {
	return kernel.WriteVmlinux(h.ImageKernel(name), h.ImageVmlinux(name))
}
