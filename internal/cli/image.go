package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
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

Examples:
  sudo microvm image build debian
  sudo microvm image import alpine ./alpine-rootfs.tar.gz
  sudo microvm image list
  sudo microvm image rm debian`,
		sub: []*command{imageBuildCmd(), imageImportCmd(), imageListCmd(), imageRmCmd()},
	}
}

func imageBuildCmd() *command {
	var mirror string
	return &command{
		name:  "build",
		args:  "[-f FILE] [--mirror URL] NAME",
		short: "build an image from its recipe (debian)",
		long: `
Builds the image NAME from its recipe. The one recipe is debian: Debian 12
with systemd, OpenSSH and the cloud kernel, made with debootstrap (3 min
29 s measured on a busy 2-core machine, nearly all of it debootstrap
downloading and unpacking about 100 MB). Any other system comes in with
image import.

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
		complete: func(*env, []string) []string { return image.RecipeNames() },
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name the image to build, e.g. microvm image build debian", errUsage)
			}
			if _, err := image.FindRecipe(args[0]); err != nil {
				return err
			}
			return imageJob(e, args[0], func(ctx context.Context, h config.Host, w io.Writer) error {
				return image.Build(ctx, h, args[0], w, image.Options{Mirror: mirror, Boot: image.BootFiles})
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
			return imageJob(e, args[0], func(ctx context.Context, h config.Host, w io.Writer) error {
				return image.Import(ctx, h, args[0], args[1], w, image.Options{Boot: image.BootFiles})
			})
		},
	}
}

// imageJob runs a build or an import of the image name, showing its
// phases and logging all of it, until it ends or SIGINT or SIGTERM stops
// it (package image then removes what it made).
func imageJob(e *env, name string, job func(context.Context, config.Host, io.Writer) error) error {
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
	logPath := in.Host.ImageBuildLog(name)
	dir, err := safedir.OpenPrivateAll(filepath.Dir(logPath))
	if err != nil {
		return err
	}
	log, err := dir.OpenAppend(filepath.Base(logPath), 0o644)
	dir.Close()
	if err != nil {
		return err
	}
	defer log.Close()
	if err := log.Truncate(0); err != nil { // this build's log only
		return err
	}
	fmt.Fprintf(e.stdout, "making image %s; the whole log is in %s\n", name, logPath)
	p := newProgress(e.stdout, log)
	err = job(ctx, in.Host, p)
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
Lists the images under STATE_DIR/images: their size on disk, their kernel,
when they were made, and the VMs of infra.toml that boot them.

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
			if asJSON {
				d := imagesDoc{Version: jsonVersion, File: in.File, Images: []imageDoc{}}
				for _, i := range infos {
					d.Images = append(d.Images, imageDoc{Name: i.Name, SizeBytes: i.Size, Kernel: i.Kernel, Created: i.Created, UsedBy: orEmpty(users(in, i.Name))})
				}
				return printJSON(e.stdout, d)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tKERNEL\tCREATED\tUSED BY")
			for _, i := range infos {
				fmt.Fprintf(tw, "%s\t%d MiB\t%s\t%s\t%v\n", i.Name, i.Size>>20, i.Kernel, i.Created.Format("2006-01-02 15:04"), users(in, i.Name))
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
	Name      string    `json:"name"`
	SizeBytes int64     `json:"size_bytes" doc:"on disk, each file once"`
	Kernel    string    `json:"kernel" doc:"its kernel's version; empty if none is found"`
	Created   time.Time `json:"created" doc:"when it was made (RFC 3339)"`
	UsedBy    []string  `json:"used_by" doc:"the VMs of the file that boot it"`
}

func imageRmCmd() *command {
	return &command{
		name:  "rm",
		args:  "[-f FILE] NAME",
		short: "remove an image no VM uses",
		long: `
Removes the image NAME, which no VM of infra.toml may name and no running
VM may use.

Examples:
  sudo microvm image rm debian`,
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
			if err := image.Remove(in.Host, args[0], users(in, args[0])); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "image %s removed\n", args[0])
			return nil
		},
	}
}

// users lists the VMs of the file that boot image name.
func users(in *config.Infra, name string) []string {
	var out []string
	for _, vm := range in.VMs {
		if vm.Image == name {
			out = append(out, vm.Name)
		}
	}
	return out
}
