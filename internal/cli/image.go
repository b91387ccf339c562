package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"text/tabwriter"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
)

func imageCmd() *command {
	var mirror string
	return &command{
		name:  "image",
		args:  "[-f FILE] build NAME | import NAME ROOTFS.tar | list | rm NAME",
		short: "build, import, list and remove the shared system images",
		long: `
An image is the root filesystem every VM that names it boots, shared
read-only (the seed's shared /nix/store). Images live under
STATE_DIR/images/NAME and never change once made: to update one, remove it
and build it again. With storage = "zfs", each image is a dataset of its
own, ZFS_DATASET/images/NAME, set readonly=on once built (run
microvm apply --host-only first: it makes ZFS_DATASET/images).

  build debian      debootstraps Debian 12 with systemd, OpenSSH and the
                    cloud kernel (a few minutes; needs debootstrap)
  import NAME TAR   makes an image of any root filesystem tarball (.tar,
                    .tar.gz, .tar.zst, .tar.xz) that has a kernel in /boot
  list              the images, their size and kernel
  rm NAME           removes an image no VM in infra.toml uses

Examples:
  sudo microvm image build debian
  sudo microvm image import alpine ./alpine-rootfs.tar.gz
  sudo microvm image list
  sudo microvm image rm debian`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&mirror, "mirror", image.DefaultMirror, "Debian mirror for build")
		},
		run: func(e *env, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("%w: say build, import, list or rm", errUsage)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot(); err != nil {
				return err
			}
			ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
			defer cancel()
			opt := image.Options{Mirror: mirror, Boot: image.BootFiles}
			switch sub := args[0]; {
			case sub == "build" && len(args) == 2:
				if err := image.Build(ctx, in.Host, args[1], e.stdout, opt); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "image %s is ready in %s\n", args[1], in.Host.ImageDir(args[1]))
			case sub == "import" && len(args) == 3:
				if err := image.Import(ctx, in.Host, args[1], args[2], e.stdout, opt); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "image %s is ready in %s\n", args[1], in.Host.ImageDir(args[1]))
			case sub == "list" && len(args) == 1:
				infos, err := image.List(in.Host)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSIZE\tKERNEL\tCREATED\tUSED BY")
				for _, i := range infos {
					fmt.Fprintf(tw, "%s\t%d MiB\t%s\t%s\t%v\n", i.Name, i.Size>>20, i.Kernel, i.Created.Format("2006-01-02 15:04"), users(in, i.Name))
				}
				tw.Flush()
			case sub == "rm" && len(args) == 2:
				if err := image.Remove(in.Host, args[1], users(in, args[1])); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "image %s removed\n", args[1])
			default:
				return fmt.Errorf("%w: image %v", errUsage, args)
			}
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
