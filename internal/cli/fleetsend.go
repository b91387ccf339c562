package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// fleetSendCmd is the source's half of microvm move, which runs it over
// SSH: the VM's data as a ZFS stream on stdout, which the mover relays to
// the target's fleet receive.
func fleetSendCmd() *command {
	var snap, base string
	return &command{
		name:  "send",
		args:  "[-f FILE] NAME --snapshot move-LABEL [--base move-LABEL]",
		short: "write a VM's data as a ZFS stream to stdout (microvm move runs it)",
		long: `
Writes the VM's /etc, /var and volumes (its dataset) to stdout as a ZFS
stream, at the snapshot --snapshot, which is taken if it does not exist
yet. With --base, only the changes since that earlier snapshot are sent
(zfs send -i). The VM may run: the snapshot is what a power cut would
leave, and microvm move sends a last increment once it has stopped it.

It is the source's half of microvm move, which runs it over SSH and relays
the stream to microvm fleet receive on the target; it is seldom run by
hand. Snapshot names start with move-.

Needs [host] storage = "zfs" and root.

Examples:
  sudo microvm fleet send vm1 --snapshot move-1 | ssh hv2 sudo microvm fleet receive vm1
  sudo microvm fleet send vm1 --snapshot move-2 --base move-1 > vm1.zfs`,
		flags: func(fs *pflag.FlagSet) {
			fs.StringVar(&snap, "snapshot", "", "send the snapshot `move-LABEL`, taking it if it does not exist")
			fs.StringVar(&base, "base", "", "send only the changes since the snapshot `move-LABEL`")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name one VM", errUsage)
			}
			if snap == "" {
				return fmt.Errorf("%w: --snapshot move-LABEL is required", errUsage)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			vm, ok := in.VM(args[0])
			if !ok {
				return fmt.Errorf("no VM %q in %s", args[0], in.File)
			}
			if in.Host.Storage != config.StorageZFS {
				return fmt.Errorf("%s: %w", in.File, storage.ErrMoveNeedsZFS)
			}
			if err := needRoot("sending a VM's data is a ZFS operation"); err != nil {
				return err
			}
			if isTerminal(e.stdout) {
				return errors.New("refusing to write a ZFS stream to a terminal; pipe it to microvm fleet receive, or redirect it to a file")
			}
			return storage.Send(in.Host, vm.Name, snap, base, e.stdout)
		},
	}
}
