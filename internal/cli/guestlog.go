package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/journal"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// showGuest is logs --guest: the guest's journal, from the VM's
// /var/log/journal on the host (package guest keeps it there), read in
// process by package journal, as hostile input, without SSH and without
// the guest running.
func showGuest(e *env, vm *config.VM, unit string, lines int, follow bool) error {
	if err := needRoot("logs --guest reads the VM's /var"); err != nil {
		return err
	}
	state, err := safedir.OpenPrivate(vm.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s has no state yet (%s): it has never been started", vm.Name, vm.StateDir)
	}
	if err != nil {
		return err
	}
	root, err := state.OpenDir("var/log/journal")
	state.Close()
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s has no journal in its /var/log/journal yet; it is kept there from its next start (docs/guest.md)", vm.Name)
	}
	if err != nil {
		return err
	}
	d := journal.OpenDir(root)
	defer d.Close()
	keep := func(*journal.Entry) bool { return true }
	if unit != "" {
		keep = journal.Unit(unit)
	}
	// As journalctl does, a line between the entries of two boots.
	var boot [16]byte
	line := func(en *journal.Entry) string {
		s := journal.Short(en)
		if boot != en.BootID && boot != ([16]byte{}) {
			s = fmt.Sprintf("-- Boot %x --\n%s", en.BootID, s)
		}
		boot = en.BootID
		return s
	}
	var out []string
	perr := d.Poll(func(en journal.Entry) {
		if !keep(&en) {
			return
		}
		out = append(out, line(&en))
		if lines > 0 && len(out) >= 2*lines {
			out = append(out[:0], out[len(out)-lines:]...)
		}
	})
	if lines > 0 && len(out) > lines {
		out = out[len(out)-lines:]
	}
	for _, l := range out {
		fmt.Fprintln(e.stdout, l)
	}
	warn := func(err error) {
		if err != nil {
			fmt.Fprintf(e.stderr, "warning: part of %s's journal could not be read: %v\n", vm.Name, err)
		}
	}
	warn(perr)
	if !follow {
		if len(out) == 0 && unit != "" {
			fmt.Fprintf(e.stderr, "no entries of %s in %s's journal\n", unit, vm.Name)
		}
		return nil
	}
	stop, release := stopOnSignal()
	defer release()
	last := ""
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(500 * time.Millisecond):
		}
		err := d.Poll(func(en journal.Entry) {
			if keep(&en) {
				fmt.Fprintln(e.stdout, line(&en))
			}
		})
		if err != nil && err.Error() != last { // once per new problem
			warn(err)
		}
		if err != nil {
			last = err.Error()
		}
	}
}
