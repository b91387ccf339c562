package cli

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func teardownCmd() *command {
	var data, yes, dryRun bool
	return &command{
		name:  "teardown",
		args:  "[-f FILE] [--dry-run] [--data [--yes]]",
		short: "remove all that apply made: VMs stopped, units, firewall, bridges, TAPs, routes",
		long: `
Undoes apply: stops every VM (also those that left the file) and the
microvm host that keeps the firewall, removes the systemd units
(microvm@.service, microvms.target, microvm-host.service and their links), the
VM subnets advertised to tailscaled, every bridge and TAP the program made,
its nftables table, and run_dir with the mounts in it. Like apply, it
prints each change as a command, and a teardown that was interrupted is
finished by running it again.

The VMs' data stays: state_dir with each VM's /etc and /var, the images
and the admin key. --data deletes it too (with storage = "zfs", the
dataset zfs_dataset and everything below it), after asking, unless --yes.
The VMs' users (microvm-NAME) stay with their data; --data deletes them
too. IPv4 forwarding stays as it is: other software may rely on it.

--dry-run prints what it would do and changes nothing. Needs root.

Examples:
  sudo microvm teardown --dry-run
  sudo microvm teardown
  sudo microvm teardown --data --yes      and delete every VM's data and the images`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&dryRun, "dry-run", false, "print what it would remove, change nothing")
			fs.BoolVar(&data, "data", false, "also delete state_dir: every VM's /etc and /var, and the images")
			fs.BoolVar(&yes, "yes", false, "do not ask before deleting the data")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, m, lock, err := e.lifecycle()
			if err != nil {
				return err
			}
			defer func() {
				// The lock lives in run_dir, which goes too.
				lock.Release()
				if !dryRun {
					// Only if nothing else is left there: another
					// process's files keep run_dir, which is no error.
					_ = os.Remove(in.Host.LockFile())
					_ = os.Remove(in.Host.RunDir)
				}
			}()
			p, err := teardownPlan(e, in, m, data)
			if err != nil {
				return err
			}
			if dryRun {
				p.Print(e.stdout)
				return nil
			}
			if data && !yes && len(p.Actions) > 0 {
				what := storage.For(in.Host).Holds(nil)
				ok, err := confirm(e.stdin, e.stdout, fmt.Sprintf("Tear down and delete %s: every VM's /etc and /var, their snapshots and the images? This cannot be undone.\nType yes to delete: ", what))
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("not confirmed; nothing was changed")
				}
			}
			if err := p.Apply(e.stdout); err != nil {
				return fmt.Errorf("%w\nrun teardown again to finish", err)
			}
			if len(p.Actions) == 0 {
				fmt.Fprintln(e.stdout, "nothing to remove")
			} else if !data {
				fmt.Fprintf(e.stdout, "done; the VMs' data stays in %s (microvm teardown --data deletes it)\n", in.Host.StateDir)
			}
			return nil
		},
	}
}

// teardownPlan is what teardown does, in order: stop every VM that runs
// (while its network is there for a clean shutdown), remove the units,
// then the host part (plan.Teardown), then, with data, state_dir.
func teardownPlan(e *env, in *config.Infra, m supervise.Manager, data bool) (*plan.Plan, error) {
	stops, vms, err := lifecycle.Teardown(e.stdout, in, m)
	if err != nil {
		return nil, err
	}
	p := &plan.Plan{Actions: stops}
	if units := installedUnits(); len(units) > 0 {
		p.Actions = append(p.Actions, &removeUnits{dir: supervise.UnitDir, files: units, reload: supervise.Booted()})
	}
	host, err := plan.Teardown(in)
	if err != nil {
		return nil, err
	}
	p.Actions = append(p.Actions, host.Actions...)
	if data {
		p.Actions = append(p.Actions, dataRemoval(in)...)
		// The VMs' users go with their data, as with destroy --data.
		for _, vm := range vms {
			if _, err := user.Lookup(in.Host.VMUser(vm.Name)); err == nil {
				p.Actions = append(p.Actions, &hostnet.DelUser{Name: in.Host.VMUser(vm.Name), VM: vm.Name})
			}
		}
	}
	return p, nil
}

// installedUnits lists the program's unit files in supervise.UnitDir and the
// links that enable them, relative to it.
func installedUnits() []string {
	names := map[string]bool{supervise.Template: true, supervise.Target: true}
	if u, err := supervise.Render("/microvm", "/infra.toml", nil); err == nil {
		for n := range u {
			names[n] = true
		}
	}
	// Each VM's limits, a drop-in of its unit (also of VMs that left the
	// file). Glob fails only on a bad pattern, and this one is fixed.
	dropIns, _ := filepath.Glob(filepath.Join(supervise.UnitDir, "microvm@*.service.d", "limits.conf"))
	for _, d := range dropIns {
		if b, err := os.ReadFile(d); err == nil && supervise.Ours(b) {
			rel, _ := filepath.Rel(supervise.UnitDir, d) // d is under UnitDir: Glob made it
			names[rel] = true
		}
	}
	ours := func(n string) bool { return names[n] || strings.HasPrefix(n, "microvm@") }
	var out []string
	for n := range names {
		if _, err := os.Lstat(filepath.Join(supervise.UnitDir, n)); err == nil {
			out = append(out, n)
		}
	}
	// Glob fails only on a bad pattern, and this one is fixed.
	wants, _ := filepath.Glob(filepath.Join(supervise.UnitDir, "*.wants", "*"))
	for _, w := range wants {
		if fi, err := os.Lstat(w); err == nil && fi.Mode()&os.ModeSymlink != 0 && ours(filepath.Base(w)) {
			rel, _ := filepath.Rel(supervise.UnitDir, w) // w is under UnitDir: Glob made it
			out = append(out, rel)
		}
	}
	sort.Strings(out)
	return out
}

// removeUnits deletes the unit files and their links (what systemctl
// disable removes), then the wants directories they leave empty, and
// reloads systemd where it runs.
type removeUnits struct {
	dir    string
	files  []string
	reload bool
}

func (a *removeUnits) String() string {
	s := "cd " + a.dir + " && rm " + strings.Join(a.files, " ")
	if a.reload {
		s += "; systemctl daemon-reload"
	}
	return s
}

func (a *removeUnits) Apply() error {
	for _, f := range a.files {
		p := filepath.Join(a.dir, f)
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
		if d := filepath.Dir(p); d != a.dir {
			os.Remove(d) // only if empty
		}
	}
	if a.reload {
		return supervise.Systemctl("daemon-reload")
	}
	return nil
}

// dataRemoval deletes state_dir: with ZFS the dataset tree first (which
// unmounts it), then the directory.
func dataRemoval(in *config.Infra) []action.Action {
	var out []action.Action
	if a := storage.For(in.Host).Destroy(nil); a != nil {
		out = append(out, a)
	}
	if _, err := os.Lstat(in.Host.StateDir); err == nil {
		out = append(out, &plan.RemoveTree{Dir: in.Host.StateDir, Note: "every VM's /etc and /var, the images, the admin key"})
	}
	return out
}
