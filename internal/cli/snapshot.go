package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func snapshotCmd() *command {
	return &command{
		name:  "snapshot",
		args:  "[-f FILE] NAME [LABEL]",
		short: "take a snapshot of a VM's /etc and /var (storage = \"zfs\")",
		long: `
Takes a ZFS snapshot of the dataset holding the VM's /etc and /var, called
LABEL, or the time (UTC) if no label is given. Snapshots take no space at
first; they then hold what the VM changes or deletes. A snapshot of a running
VM is what a power cut would leave; stop the VM first for a clean one.

A person's snapshots are kept until destroyed (zfs destroy). Automatic ones,
taken before update and apply restart a VM, are called auto-... and only the
newest [host] keep_snapshots of them are kept.

Needs [host] storage = "zfs" and root.

Examples:
  sudo microvm snapshot vm1 before-upgrade
  sudo microvm snapshot vm1
  sudo microvm snapshot rm vm1 before-upgrade`,
		complete: vmNames,
		sub:      []*command{snapshotRmCmd()},
		run: func(e *env, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return fmt.Errorf("%w: name one VM, and optionally a label", errUsage)
			}
			in, vm, b, err := loadSnapshots(e, args[0])
			if err != nil {
				return err
			}
			label := storage.DefaultLabel(time.Now())
			if len(args) == 2 {
				label = args[1]
			}
			if err := storage.CheckLabel(label); err != nil {
				return err
			}
			if err := b.Snapshot(vm, label); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "snapshot %s of %s taken (%s@%s)\n", label, vm.Name, in.Host.VMDataset(vm), label)
			return nil
		},
	}
}

func snapshotsCmd() *command {
	var asJSON bool
	return &command{
		name:  "snapshots",
		args:  "[-f FILE] [--json] NAME",
		short: "list a VM's snapshots",
		long: `
Lists the snapshots of the VM's /etc and /var, oldest first: their name,
when they were taken, the space only they hold (what destroying one frees),
and whether they are automatic (taken before update and apply restart the
VM, and pruned) or a person's.

Needs [host] storage = "zfs" and root.

Examples:
  sudo microvm snapshots vm1
  sudo microvm snapshots vm1 --json`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON (docs/cli.md)")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name one VM", errUsage)
			}
			_, vm, _, snaps, err := listSnapshots(e, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, snapshotsDoc{Version: jsonVersion, File: e.file, VM: vm.Name, Snapshots: snapshotDocs(snaps)})
			}
			if len(snaps) == 0 {
				fmt.Fprintf(e.stdout, "%s has no snapshots; take one with: microvm snapshot %s LABEL\n", vm.Name, vm.Name)
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTAKEN\tUSED\tKIND")
			for _, s := range snaps {
				kind := "manual"
				if s.Auto {
					kind = "automatic"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Created.Format("2006-01-02 15:04:05"), humanSize(s.Used), kind)
			}
			return tw.Flush()
		},
	}
}

func rollbackCmd() *command {
	var yes bool
	return &command{
		name:  "rollback",
		args:  "[-f FILE] [--yes] NAME [SNAPSHOT]",
		short: "return a VM's /etc and /var to a snapshot",
		long: `
Returns the VM's /etc and /var to SNAPSHOT, or to its newest snapshot: what
the VM changed since is lost, and the snapshots taken after SNAPSHOT are
destroyed (ZFS can only roll back to a dataset's newest snapshot). Asks
first, naming what will be lost, unless --yes is given.

A running VM is shut down cleanly first (a guest must not see its files
change under it), rolled back, and started again.

Needs [host] storage = "zfs" and root.

Examples:
  sudo microvm rollback vm1                      back to the newest snapshot
  sudo microvm rollback vm1 before-upgrade
  sudo microvm rollback --yes vm1 before-upgrade   without asking`,
		complete: vmNames,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&yes, "yes", false, "do not ask for confirmation")
		},
		run: func(e *env, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return fmt.Errorf("%w: name one VM, and optionally a snapshot", errUsage)
			}
			in, vm, b, snaps, err := listSnapshots(e, args[0])
			if err != nil {
				return err
			}
			if len(snaps) == 0 {
				return fmt.Errorf("%s has no snapshots to roll back to", vm.Name)
			}
			target := snaps[len(snaps)-1]
			if len(args) == 2 {
				i := snapshotIndex(snaps, args[1])
				if i < 0 {
					return fmt.Errorf("%s has no snapshot %q; it has: %s", vm.Name, args[1], snapshotNames(snaps))
				}
				target = snaps[i]
			}
			later := storage.Later(snaps, target.Name)
			if !yes {
				ok, err := confirmRollback(e.stdin, e.stdout, vm, target, later)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("not confirmed; %s is unchanged", vm.Name)
				}
			}
			return whileStopped(e, in, vm, func() error {
				if err := b.Rollback(vm, target.Name); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s rolled back to %s\n", vm.Name, target.Name)
				return nil
			})
		},
	}
}

func snapshotRmCmd() *command {
	return &command{
		name:  "rm",
		args:  "[-f FILE] NAME SNAPSHOT...",
		short: "destroy snapshots of a VM",
		long: `
Destroys the named snapshots of the VM's /etc and /var (zfs destroy
NAME@SNAPSHOT), freeing the space only they hold (microvm snapshots shows
it). The VM's current data is not touched, and it may keep running.

Needs [host] storage = "zfs" and root.

Examples:
  sudo microvm snapshot rm vm1 before-upgrade
  sudo microvm snapshot rm vm1 auto-20260101-120000-update old-one`,
		complete: vmNames,
		run: func(e *env, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("%w: name one VM and the snapshots to destroy", errUsage)
			}
			_, vm, b, snaps, err := listSnapshots(e, args[0])
			if err != nil {
				return err
			}
			for _, name := range args[1:] {
				if snapshotIndex(snaps, name) < 0 {
					return fmt.Errorf("%s has no snapshot %q; it has: %s", vm.Name, name, snapshotNames(snaps))
				}
			}
			for _, name := range args[1:] {
				if err := b.DestroySnapshot(vm, name); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "snapshot %s of %s destroyed\n", name, vm.Name)
			}
			return nil
		},
	}
}

// listSnapshots is loadSnapshots with the VM's snapshots, oldest first.
func listSnapshots(e *env, name string) (*config.Infra, *config.VM, storage.Backend, []storage.Snapshot, error) {
	in, vm, b, err := loadSnapshots(e, name)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	snaps, err := b.Snapshots(vm)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return in, vm, b, snaps, nil
}

// snapshotsDoc is snapshots --json.
type snapshotsDoc struct {
	Version   int           `json:"version" doc:"the version of this document's format"`
	File      string        `json:"file" doc:"the infra.toml read"`
	VM        string        `json:"vm"`
	Snapshots []snapshotDoc `json:"snapshots" doc:"oldest first"`
}

// snapshotDoc is one snapshot of a VM's /etc and /var.
type snapshotDoc struct {
	Name      string    `json:"name" doc:"what follows the @ in ZFS"`
	Created   time.Time `json:"created" doc:"RFC 3339, to the second"`
	UsedBytes int64     `json:"used_bytes" doc:"what only this snapshot holds: what destroying it frees"`
	Automatic bool      `json:"automatic" doc:"taken before update or apply restarted the VM, and pruned to keep_snapshots"`
}

func snapshotDocs(snaps []storage.Snapshot) []snapshotDoc {
	out := []snapshotDoc{}
	for _, s := range snaps {
		out = append(out, snapshotDoc{Name: s.Name, Created: s.Created, UsedBytes: s.Used, Automatic: s.Auto})
	}
	return out
}

// loadSnapshots reads the file and finds the VM and its storage, for the
// three commands above. A host on plain directories is told how to get
// snapshots before being asked for root.
func loadSnapshots(e *env, name string) (*config.Infra, *config.VM, storage.Backend, error) {
	in, err := e.load()
	if err != nil {
		return nil, nil, nil, err
	}
	vm, ok := in.VM(name)
	if !ok {
		return nil, nil, nil, fmt.Errorf("no VM %q in %s", name, in.File)
	}
	if in.Host.Storage != config.StorageZFS {
		return nil, nil, nil, fmt.Errorf("%s: %w", in.File, storage.ErrNoSnapshots)
	}
	if os.Geteuid() != 0 {
		return nil, nil, nil, fmt.Errorf("snapshots are ZFS operations, which need root; run it with sudo")
	}
	return in, vm, storage.For(in.Host), nil
}

// whileStopped runs f, which changes vm's data under it, with vm stopped:
// a running VM is shut down cleanly first, as microvm down does, and
// started again afterwards (also when f failed, on the data it left).
func whileStopped(e *env, in *config.Infra, vm *config.VM, f func() error) error {
	m, err := e.manager()
	if err != nil {
		return err
	}
	lock, err := supervise.TakeLock(in.Host)
	if err != nil {
		return err
	}
	defer lock.Release()
	running := lifecycle.StateOf(m, vm).State != lifecycle.Stopped
	if running {
		if err := lifecycle.StopVM(e.stdout, m, vm); err != nil {
			return err
		}
	}
	ferr := f()
	if running {
		if err := lifecycle.StartVM(e.stdout, in, m, vm, lifecycle.StartTimeout); err != nil {
			return errors.Join(ferr, err)
		}
	}
	return ferr
}

// confirmRollback asks whether to roll back, saying what will be lost, and reads
// the answer from stdin.
func confirmRollback(stdin io.Reader, w io.Writer, vm *config.VM, to storage.Snapshot, later []storage.Snapshot) (bool, error) {
	fmt.Fprintf(w, "Roll %s back to snapshot %s, taken %s?\n", vm.Name, to.Name, to.Created.Format("2006-01-02 15:04:05"))
	fmt.Fprintf(w, "Everything %s changed in /etc and /var since then is lost.\n", vm.Name)
	if len(later) > 0 {
		fmt.Fprintf(w, "These later snapshots are destroyed too: %s.\n", snapshotNames(later))
	}
	return confirm(stdin, w, "Type yes to roll back: ")
}

func snapshotIndex(snaps []storage.Snapshot, name string) int {
	for i, s := range snaps {
		if s.Name == name {
			return i
		}
	}
	return -1
}

func snapshotNames(snaps []storage.Snapshot) string {
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}

// humanSize prints bytes for a person: 0 B, 812 KiB, 3.4 GiB.
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, exp := float64(n)/unit, 0
	for v >= unit && exp < 4 {
		v /= unit
		exp++
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[exp])
	}
	return fmt.Sprintf("%.0f %ciB", v, "KMGTP"[exp])
}
