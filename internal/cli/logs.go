package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func logsCmd() *command {
	var follow, console, guestLog bool
	var lines int
	var unit string
	return &command{
		name:  "logs",
		args:  "[--file FILE] [-f] [--console | --guest [-u UNIT]] [-n LINES] NAME",
		short: "show a VM's supervisor log, its serial console, or its guest's journal",
		long: `
Prints the log of the VM's supervisor (microvm run NAME): its virtiofs
daemons, its VMM, starts, stops and restarts. Under systemd this is
journalctl -u microvm@NAME; without systemd, RUN_DIR/NAME/supervisor.log.

--console prints the guest's serial console instead (RUN_DIR/NAME/console.log,
begun anew at each start): the kernel's and the guest's boot messages.
Both logs rotate at 10 MiB: the one before is NAME.log.1 beside it.

--guest prints the guest's own journal, the logs of its services, kept in
its /var/log/journal across restarts (up to 64 MiB, docs/guest.md): read
from the host, without SSH, also while the VM is stopped; -u UNIT keeps a
unit's entries (journalctl -u in the guest). Needs root.

Here -f is --follow, as in journalctl and tail; the file is --file.

Examples:
  microvm logs vm1
  microvm logs vm1 -f               like journalctl -u microvm@vm1 -f
  microvm logs -f vm1               the same
  microvm logs --console -n 50 vm1
  sudo microvm logs --guest -u nginx -f web   the guest's nginx, as journalctl -u nginx -f there
  microvm logs --file /srv/infra.toml vm1`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVarP(&follow, "follow", "f", false, "keep printing what is added, until interrupted (as journalctl -f)")
			fs.BoolVar(&console, "console", false, "print the guest's serial console instead")
			fs.BoolVar(&guestLog, "guest", false, "print the guest's journal instead (its services' logs, kept across restarts)")
			fs.StringVarP(&unit, "unit", "u", "", "with --guest: only the entries of `UNIT` (a name without a suffix is a .service)")
			fs.IntVarP(&lines, "lines", "n", 0, "print only the last `LINES` lines (0: all)")
		},
		run: func(e *env, args []string) error {
			_, vm, err := e.oneVM(args)
			if err != nil {
				return err
			}
			switch {
			case console && guestLog:
				return fmt.Errorf("%w: --console and --guest are two different logs; give one", errUsage)
			case unit != "" && !guestLog:
				return fmt.Errorf("%w: -u UNIT is for the guest's journal; add --guest", errUsage)
			case guestLog:
				return showGuest(e, vm, unit, lines, follow)
			}
			if !console && supervise.Booted() {
				jargs := []string{"-u", supervise.Unit(vm.Name), "--no-pager"}
				if follow {
					jargs = append(jargs, "-f")
				}
				if lines > 0 {
					jargs = append(jargs, "-n", fmt.Sprint(lines))
				}
				c := exec.Command("journalctl", jargs...)
				c.Stdout, c.Stderr = e.stdout, e.stderr
				return c.Run()
			}
			return showFile(e, vm, console, lines, follow)
		},
	}
}

// openLog opens vm's console log or its supervisor log, without following
// anything the VMM could have put in their place (package runner).
func openLog(vm *config.VM, console bool) (*os.File, error) {
	if console {
		return supervise.OpenConsoleLog(vm)
	}
	return supervise.OpenSupervisorLog(vm)
}

// showFile prints vm's console or supervisor log (its last lines if lines
// > 0) and, with follow, what is added to it until interrupted.
func showFile(e *env, vm *config.VM, console bool, lines int, follow bool) error {
	f, err := openLog(vm, console)
	if errors.Is(err, fs.ErrNotExist) {
		path := vm.SupervisorLog()
		if console {
			path = vm.ConsoleLog()
		}
		return fmt.Errorf("%s has no log yet (%s); it has not been started here", vm.Name, path)
	}
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	if lines > 0 {
		s, err := supervise.TailFile(f, lines)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, s)
	} else if _, err := io.Copy(e.stdout, f); err != nil {
		return err
	}
	for follow {
		if _, err := io.Copy(e.stdout, f); err != nil {
			return err
		}
		// A log begun anew (at a start, or rotated) or rewritten starts
		// again from the top, once what the old one got last is out.
		if again, err := openLog(vm, console); err == nil {
			fi, serr := again.Stat()
			cur, cerr := f.Stat()
			// Seek(0, current) on a regular file cannot fail.
			if pos, _ := f.Seek(0, io.SeekCurrent); serr == nil && (cerr == nil && !os.SameFile(fi, cur) || fi.Size() < pos) {
				if _, err := io.Copy(e.stdout, f); err != nil {
					again.Close()
					return err
				}
				f.Close()
				f = again
			} else {
				again.Close()
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	return nil
}
