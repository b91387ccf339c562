package cli

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// fleetReceiveCmd is the target's half of microvm move, which runs it over
// SSH: the stream of the source's fleet send on stdin, into the dataset
// this host's own [host] settings name.
func fleetReceiveCmd() *command {
	var list bool
	return &command{
		name:  "receive",
		args:  "[-f FILE] NAME [--list]",
		short: "receive a VM's data from fleet send on stdin (microvm move runs it)",
		long: `
Receives on stdin the ZFS stream microvm fleet send wrote on another host,
into the VM's dataset on this one: ZFS_DATASET/NAME, mounted at
STATE_DIR/NAME, as this host's [host] settings say (the VM need not be in
this host's file yet; nothing of the stream decides where it goes). Only
the newest move-* snapshot is kept: the next move sends the changes since
it. With --list, prints the VM's move-* snapshots here, oldest first, one a
line, from which microvm move picks the base of an incremental send.

It refuses, changing nothing, while the VM runs on this host, when the
VM's dataset here exists but is not a copy from an earlier move (it has no
move-* snapshot), when STATE_DIR/NAME holds other files, and when the
stream could create other datasets or set properties (zfs send -R, -p).

It is the target's half of microvm move, which runs it over SSH; it is
seldom run by hand.

Needs [host] storage = "zfs" and root.

Examples:
  ssh hv1 sudo microvm fleet send vm1 --snapshot move-1 | sudo microvm fleet receive vm1
  sudo microvm fleet receive vm1 --list`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&list, "list", false, "print the VM's move-* snapshots on this host instead")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name one VM", errUsage)
			}
			name := args[0]
			in, err := e.load()
			if err != nil {
				return err
			}
			if !config.IsVMName(name) {
				return fmt.Errorf("%q is not a VM name", name)
			}
			if in.Host.Storage != config.StorageZFS {
				return fmt.Errorf("%s: %w", in.File, storage.ErrMoveNeedsZFS)
			}
			if err := needRoot("receiving a VM's data is a ZFS operation"); err != nil {
				return err
			}
			if list {
				snaps, err := storage.MoveSnapshots(in.Host, name)
				if err != nil {
					return err
				}
				for _, s := range snaps {
					fmt.Fprintln(e.stdout, s)
				}
				return nil
			}
			// The lock keeps the VM from being started here while its
			// data arrives.
			lock, err := supervise.TakeLock(in.Host)
			if err != nil {
				return err
			}
			defer lock.Release()
			m, err := e.manager()
			if err != nil {
				return err
			}
			vm, ok := in.VM(name)
			if !ok {
				vm = in.Host.Departed(name)
			}
			running := lifecycle.StateOf(m, vm).State != lifecycle.Stopped
			if err := storage.Receive(in.Host, name, running, e.stdin); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "received %s into %s (%s)\n", name, in.Host.VMDataset(vm), vm.StateDir)
			return nil
		},
	}
}
