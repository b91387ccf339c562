package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/runner"
)

func imageCmd() *command {
	return &command{
		name:   "image",
		args:   "COMMAND",
		short:  "build, import, list and remove the shared system images",
		noFile: true,
		long: `
An image is the root filesystem every VM that names it boots, shared
read-only (the seed's shared /nix/store). Images live under
STATE_DIR/images/NAME and never change once made: to update one, remove it
and build it again. With storage = "zfs", each image is a dataset of its
own, ZFS_DATASET/images/NAME, set readonly=on once built (run
microvm apply --host-only first: it makes ZFS_DATASET/images).

An image declared in infra.toml ([image.NAME]: from, packages, files,
run) is made from another and shares it on disk (a ZFS clone, or an
overlay layer with plain directories). apply builds it when it is missing
or its definition changed, as a new version (STATE_DIR/images/NAME.VERSION)
beside the old one, which a running VM keeps until it restarts; apply
then removes the versions no VM boots (image prune does it by hand).

Examples:
  sudo microvm image build debian
  sudo microvm image build web          # an [image.web] of infra.toml
  sudo microvm image import alpine ./alpine-rootfs.tar.gz
  sudo microvm image list
  sudo microvm image rm debian
  sudo microvm image prune`,
		sub: []*command{imageBuildCmd(), imageImportCmd(), imageListCmd(), imageRmCmd(), imagePruneCmd()},
	}
}

func imageBuildCmd() *command {
	var mirror string
	return &command{
		name:  "build",
		args:  "[-f FILE] [--mirror URL] NAME",
		short: "build an image from its recipe (debian) or its [image.NAME]",
		long: `
Builds the image NAME from its recipe, or from its [image.NAME] in
infra.toml. The recipe debian is Debian 12 with systemd, OpenSSH and the
cloud kernel, made with debootstrap (3 min 29 s measured on a busy 2-core
machine, nearly all of it debootstrap downloading and unpacking about
100 MB); debian-full is the same as Debian boots it by default. Any other
system comes in with image import.

A declared image is built on its base (built first if it is missing):
its packages installed with apt-get in a chroot, from its base's mirror
(downloads are kept in STATE_DIR/images/.cache/apt for the next build),
then its files copied in, then its run commands. It is the current version
of the image, so apply builds nothing more for it.

It shows each phase with the time since the start; the whole output of
debootstrap goes to a log file it names (RUN_DIR/images/NAME.build.log).
The image is made in a staging directory and moved into place only when
complete: a build that fails, or is stopped with Ctrl-C or SIGTERM,
leaves nothing behind. Needs root and debootstrap.

Examples:
  sudo microvm image build debian
  sudo microvm image build debian --mirror http://deb.example.org/debian`,
		flags: func(fs *pflag.FlagSet) {
			fs.StringVar(&mirror, "mirror", image.DefaultMirror, "the Debian `URL` to install from")
		},
		complete: func(e *env, _ []string) []string {
			names := image.RecipeNames()
			if in, err := e.load(); err == nil {
				for _, img := range in.Images {
					names = append(names, img.Name)
				}
			}
			return names
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name the image to build, e.g. microvm image build debian", errUsage)
			}
			declared := false
			if in, err := e.load(); err == nil {
				_, declared = in.Image(args[0])
			}
			if !declared {
				if _, err := image.FindRecipe(args[0]); err != nil {
					return err
				}
			}
			return imageJob(e, args[0], func(ctx context.Context, in *config.Infra, w io.Writer) error {
				opt := image.Options{Mirror: mirror, Boot: image.BootFiles}
				if declared {
					return image.BuildDeclared(ctx, in, args[0], w, opt)
				}
				return image.Build(ctx, in.Host, args[0], w, opt)
			})
		},
	}
}

func imageImportCmd() *command {
	return &command{
		name:  "import",
		args:  "[-f FILE] NAME ROOTFS.tar",
		short: "make an image of a root filesystem tarball",
		long: `
Makes the image NAME of any root filesystem tarball (.tar, .tar.gz,
.tar.zst, .tar.xz) that has a kernel in /boot with its modules: VMs boot
the image's own kernel. Owners, modes, device nodes, ACLs and extended
attributes are kept. Like build, it leaves nothing behind when it fails or
is stopped, and writes its log to RUN_DIR/images/NAME.build.log. Needs root.

Examples:
  sudo microvm image import alpine ./alpine-rootfs.tar.gz`,
		run: func(e *env, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("%w: name the image and the tarball, e.g. microvm image import alpine ./rootfs.tar.gz", errUsage)
			}
			return imageJob(e, args[0], func(ctx context.Context, in *config.Infra, w io.Writer) error {
				return image.Import(ctx, in.Host, args[0], args[1], w, image.Options{Boot: image.BootFiles})
			})
		},
	}
}

// imageJob runs a build or an import of the image name, showing its
// phases and logging all of it, until it ends or SIGINT or SIGTERM stops
// it (package image then removes what it made).
func imageJob(e *env, name string, job func(context.Context, *config.Infra, io.Writer) error) error {
	in, err := e.load()
	if err != nil {
		return err
	}
	if err := needRoot("making an image installs packages and keeps files' owners"); err != nil {
		return err
	}
	if err := image.CheckName(name); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	log, err := image.OpenBuildLog(in.Host, name)
	if err != nil {
		return err
	}
	defer log.Close()
	logPath := log.Name()
	fmt.Fprintf(e.stdout, "making image %s; the whole log is in %s\n", name, logPath)
	p := newProgress(e.stdout, log)
	err = job(ctx, in, p)
	p.Close()
	switch {
	case ctx.Err() != nil:
		if err == nil {
			return nil // finished as the signal came
		}
		return fmt.Errorf("stopped (%v); nothing of image %s was kept (the log is %s)", context.Cause(ctx), name, logPath)
	case err != nil:
		return fmt.Errorf("%w\nthe whole log is %s", err, logPath)
	}
	return nil
}

func imageListCmd() *command {
	var asJSON bool
	return &command{
		name:  "list",
		args:  "[-f FILE] [--json]",
		short: "list the images: size, kernel, when made, which VMs use them",
		long: `
Lists the images under STATE_DIR/images: what each is made from, its size
on disk (for a version of a declared image, what it adds to its base),
its kernel, when it was made, and the VMs that boot it: those of
infra.toml that name it (or whose declared image it is the current version
of), and running VMs that still boot an older version, marked "running".

Examples:
  sudo microvm image list
  sudo microvm image list --json`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON (docs/cli.md)")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			infos, err := image.List(in.Host)
			if err != nil {
				return err
			}
			live, err := runner.ImageUsers(in.Host)
			if err != nil {
				return err
			}
			if asJSON {
				d := imagesDoc{Version: jsonVersion, File: in.File, Images: []imageDoc{}}
				for _, i := range infos {
					d.Images = append(d.Images, imageDoc{Name: i.Name, From: i.Meta.String(), SizeBytes: i.Size, Kernel: i.Kernel, Created: i.Created, UsedBy: orEmpty(users(in, i.Name, live))})
				}
				return printJSON(e.stdout, d)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tMADE OF\tSIZE\tKERNEL\tCREATED\tUSED BY")
			for _, i := range infos {
				fmt.Fprintf(tw, "%s\t%s\t%d MiB\t%s\t%s\t%s\n", i.Name, i.Meta, i.Size>>20, i.Kernel, i.Created.Format("2006-01-02 15:04"), strings.Join(users(in, i.Name, live), ", "))
			}
			return tw.Flush()
		},
	}
}

// imagesDoc is image list --json.
type imagesDoc struct {
	Version int        `json:"version" doc:"the version of this document's format"`
	File    string     `json:"file" doc:"the infra.toml read"`
	Images  []imageDoc `json:"images" doc:"by name"`
}

// imageDoc is one image.
type imageDoc struct {
	Name      string    `json:"name" doc:"its directory under STATE_DIR/images: NAME, or NAME.VERSION for a version of a declared image"`
	From      string    `json:"made_of" doc:"its recipe and version, the tarball it was imported from, or what a declared image adds to its base"`
	SizeBytes int64     `json:"size_bytes" doc:"on disk, each file once"`
	Kernel    string    `json:"kernel" doc:"its kernel's version; empty if none is found"`
	Created   time.Time `json:"created" doc:"when it was made (RFC 3339)"`
	UsedBy    []string  `json:"used_by" doc:"the VMs of the file that boot it, and running VMs that still boot it (\"NAME (running)\")"`
}

func imageRmCmd() *command {
	return &command{
		name:  "rm",
		args:  "[-f FILE] NAME",
		short: "remove an image no VM uses",
		long: `
Removes the image NAME, which no VM of infra.toml may name and no running
VM may boot, nor may another image be made from it. NAME may be one
version of a declared image (NAME.VERSION, as image list shows it), or a
declared image's name, which removes every version of it that no VM boots.

Examples:
  sudo microvm image rm debian
  sudo microvm image rm web.3f2a9c1b4d5e6f70`,
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name one image", errUsage)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot("images belong to root"); err != nil {
				return err
			}
			dirs := []string{args[0]}
			if _, err := os.Stat(in.Host.ImageDir(args[0])); err != nil {
				if dirs = versions(in.Host, args[0]); len(dirs) == 0 {
					return fmt.Errorf("image %s does not exist (microvm image list shows the images)", args[0])
				}
			}
			live, err := runner.ReleaseUnused(in.Host, dirs)
			if err != nil {
				return err
			}
			for _, d := range image.Prunable(in.Host, dirs, nil) { // the order: made from another first
				if err := image.Remove(in.Host, d, users(in, d, live)); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "image %s removed\n", d)
			}
			return nil
		},
	}
}

func imagePruneCmd() *command {
	return &command{
		name:  "prune",
		args:  "[-f FILE]",
		short: "remove the old versions of declared images that no VM boots",
		long: `
Removes the versions of declared images ([image.NAME]) that are not
current (their definition or base changed, or the file no longer declares
them) and that no running VM boots. apply does it after every change;
a VM that still boots an old version keeps it until it restarts.

Examples:
  sudo microvm image prune`,
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot("images belong to root"); err != nil {
				return err
			}
			return lifecycle.PruneImages(e.stdout, in)
		},
	}
}

// versions lists the version directories of the declared image name.
func versions(h config.Host, name string) []string {
	entries, _ := os.ReadDir(h.ImagesDir())
	var out []string
	for _, e := range entries {
		if n, v, ok := config.SplitImageDir(e.Name()); ok && n == name && v != "" {
			out = append(out, e.Name())
		}
	}
	return out
}

// users lists the VMs that boot the image in dir: those of the file whose
// image it is (its current version, for a declared image), and running
// VMs that boot it (live, from runner.ImageUsers), marked so.
func users(in *config.Infra, dir string, live map[string][]string) []string {
	var out []string
	for _, vm := range in.VMs {
		if r, err := image.Resolve(in, vm.Image); err == nil && r.Dir == dir {
			out = append(out, vm.Name)
		}
	}
	for _, name := range live[dir] {
		if !slices.Contains(out, name) {
			out = append(out, name+" (running)")
		}
	}
	return out
}
