package lifecycle

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// vmAction is one change to a VM's running state, in a plan. Starting
// (or restarting) vm needs what runner.Checks checks.
type vmAction struct {
	text string
	do   func() error
	vm   *config.VM // the VM it starts; nil if it starts none
}

func (a vmAction) String() string { return a.text }
func (a vmAction) Apply() error   { return a.do() }

// Optional: when a VM's start or restart fails, the other VMs still start.
func (a vmAction) Optional() bool { return a.vm != nil }

// Plan is the host part with the VM part around it: VMs that left the
// file are stopped first (while their network is still there for a clean
// shutdown), then the host part, then the declared images that are not
// built as the file declares them are built, then VMs are started and
// restarted, and last the versions of images no VM boots any more are
// removed. What
// the host lacks for any of it (the host checks, and runner.Checks for
// each VM it starts) is in the plan's errors, all of them at once. What
// the VM actions report when applied (started, stopped, snapshot taken)
// goes to w.
func Plan(w io.Writer, in *config.Infra, m supervise.Manager) (*plan.Plan, error) {
	host, err := plan.Host(in)
	if err != nil {
		host = &plan.Plan{Errors: []error{err}}
	}
	before, after, notes, err := planVMs(w, in, m)
	if err != nil {
		return nil, err
	}
	builds, err := imageBuilds(w, in)
	if err != nil {
		return nil, err
	}
	p := &plan.Plan{Warnings: host.Warnings, Notes: append(host.Notes, notes...), Errors: host.Errors}
	p.Actions = append(append(append(append(p.Actions, before...), host.Actions...), builds...), after...)
	if prune, err := imagePrune(w, in); err != nil {
		return nil, err
	} else if prune != nil {
		p.Actions = append(p.Actions, prune)
	}
	for _, a := range after {
		if va, ok := a.(vmAction); ok && va.vm != nil {
			p.Errors = append(p.Errors, runner.Checks(in, va.vm)...)
		}
	}
	return p, nil
}

// planVMs compares each VM's running state with the file: VMs that should
// run and do not are started (autostart = true), running VMs whose
// effective settings, image or kernel changed are restarted (the plan says
// what changed), VMs no longer in the file are stopped and their run
// directory removed, their data kept. Under systemd the units are installed
// and autostart VMs enabled.
func planVMs(w io.Writer, in *config.Infra, m supervise.Manager) (before, after []action.Action, notes []string, err error) {
	bin, file, err := Self(in.File)
	if err != nil {
		return nil, nil, nil, err
	}
	if m.Kind() == supervise.KindSystemd {
		units, err := unitActions(in, bin, file)
		if err != nil {
			return nil, nil, nil, err
		}
		after = append(after, units...)
	} else if a := hostAction(in, m, bin, file); a != nil {
		after = append(after, a)
	}
	gone, err := Departed(in, m)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, vm := range gone {
		before = append(before, vmAction{
			text: fmt.Sprintf("microvm down %s   # left %s; its data stays in %s (microvm destroy %s --data deletes it)", vm.Name, in.File, vm.StateDir, vm.Name),
			do: func() error {
				// Also a supervisor whose keeper was killed (StopVM).
				if StateOf(m, vm).State != Stopped {
					if err := StopVM(w, m, vm); err != nil {
						return err
					}
				}
				if err := m.Enable(vm, false); err != nil {
					return err
				}
				return os.RemoveAll(vm.RunDir)
			},
		})
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		s := StateOf(m, vm)
		switch {
		case s.State == Running:
			if ch := Changes(in, vm, s.Started); len(ch) > 0 {
				after = append(after, vmAction{
					text: fmt.Sprintf("microvm restart %s   # %s", vm.Name, strings.Join(ch, ", ")),
					vm:   vm,
					do: func() error {
						if err := runner.Preflight(in, vm); err != nil {
							return err
						}
						if err := StopVM(w, m, vm); err != nil {
							return err
						}
						if snap, err := storage.SnapshotBeforeChange(in.Host, vm, "apply"); err != nil {
							return err
						} else if snap != "" {
							fmt.Fprintf(w, "%s: snapshot %s taken\n", vm.Name, snap)
						}
						return StartVM(w, in, m, vm, StartTimeout)
					},
				})
			}
		case s.State == Starting:
			notes = append(notes, vm.Name+" is starting (or restarting after a failure); apply leaves it to its supervisor")
		case s.State == Orphaned:
			// Its supervisor and keeper were killed: what they left runs
			// unsupervised (no restart, no clean stop). It goes, and the
			// VM starts again as the file says.
			text, start := "microvm down "+vm.Name, vm.Autostart
			if start {
				text = "microvm restart " + vm.Name
			}
			a := vmAction{
				text: text + "   # left running without its supervisor, which was killed: its processes are ended",
				do: func() error {
					if err := StopVM(w, m, vm); err != nil || !start {
						return err
					}
					return StartVM(w, in, m, vm, StartTimeout)
				},
			}
			if start {
				a.vm = vm // what starting it needs is checked with the plan
			}
			after = append(after, a)
		case vm.Autostart:
			after = append(after, vmAction{
				text: "microvm up " + vm.Name,
				vm:   vm,
				do:   func() error { return StartVM(w, in, m, vm, StartTimeout) },
			})
		}
	}
	return before, after, notes, nil
}

// Departed are the VMs with a run directory and a running supervisor that
// are no longer in the file.
func Departed(in *config.Infra, m supervise.Manager) ([]*config.VM, error) {
	entries, err := os.ReadDir(in.Host.RunDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*config.VM
	for _, e := range entries {
		if !e.IsDir() || !config.IsVMName(e.Name()) {
			continue
		}
		if _, ok := in.VM(e.Name()); ok {
			continue
		}
		vm := in.Host.Departed(e.Name())
		if hasRecords(vm) || m.Active(vm) {
			out = append(out, vm)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// hasRecords reports whether vm's run directory holds a keeper's pid file,
// a started record or a cgroup's, read only where root alone writes them.
func hasRecords(vm *config.VM) bool {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if err != nil {
		return false
	}
	defer d.Close()
	for _, f := range []string{vm.KeeperPidFile(), vm.StartedFile(), vm.CgroupRecord()} {
		// A record that cannot be read (not a regular file) is none:
		// root alone writes there, so it is not one of ours.
		if ok, _ := d.Exists(filepath.Base(f)); ok {
			return true
		}
	}
	return false
}

// Self returns this program and the absolute path of file, as a command
// that runs later (a unit, a keeper) names them.
func Self(file string) (bin, abs string, err error) {
	if bin, err = os.Executable(); err != nil {
		return "", "", fmt.Errorf("finding this program: %w", err)
	}
	if abs, err = filepath.Abs(file); err != nil {
		return "", "", fmt.Errorf("finding %s: %w", file, err)
	}
	return bin, abs, nil
}

// unitActions installs the units if they differ and sets each VM's unit
// enabled as its autostart says. A unit file of the same name that the
// program did not write is an error.
func unitActions(in *config.Infra, bin, file string) ([]action.Action, error) {
	var out []action.Action
	u, err := supervise.Render(bin, file, in.VMs)
	if err != nil {
		return []action.Action{vmAction{text: "# cannot write systemd units: " + err.Error(), do: func() error { return err }}}, nil
	}
	names, err := u.Changed(supervise.UnitDir)
	if err != nil {
		return nil, err
	}
	if len(names) > 0 {
		out = append(out, vmAction{
			text: fmt.Sprintf("install %s in %s; systemctl daemon-reload; systemctl enable %s %s", strings.Join(names, ", "), supervise.UnitDir, supervise.Target, supervise.HostUnit),
			do: func() error {
				if _, err := u.Install(supervise.UnitDir); err != nil {
					return err
				}
				if err := supervise.Systemctl("daemon-reload"); err != nil {
					return err
				}
				return supervise.Systemctl("enable", supervise.Target, supervise.HostUnit)
			},
		})
	}
	// The host unit keeps the firewall from now on, and brings the host
	// part back at boot.
	if supervise.Systemctl("is-active", "--quiet", supervise.HostUnit) != nil {
		out = append(out, vmAction{
			text: "systemctl start " + supervise.HostUnit + "   # keeps the firewall; at boot, brings the host part back",
			do:   func() error { return supervise.Systemctl("start", supervise.HostUnit) },
		})
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		enabled := supervise.Systemctl("is-enabled", "--quiet", supervise.Unit(vm.Name)) == nil
		if enabled == vm.Autostart {
			continue
		}
		verb := "enable"
		if !vm.Autostart {
			verb = "disable"
		}
		out = append(out, vmAction{
			text: fmt.Sprintf("systemctl %s %s", verb, supervise.Unit(vm.Name)),
			do:   func() error { return supervise.Systemctl(verb, supervise.Unit(vm.Name)) },
		})
	}
	return out, nil
}

// hostAction starts the detached keeper of the firewall on a host without
// systemd where VMs run without one (the VMs apply starts get it with their
// start).
func hostAction(in *config.Infra, m supervise.Manager, bin, file string) action.Action {
	if _, ok := supervise.HostKeeper(in.Host); ok {
		return nil
	}
	running := false
	for i := range in.VMs {
		if StateOf(m, &in.VMs[i]).State != Stopped {
			running = true
		}
	}
	if !running {
		return nil
	}
	return vmAction{
		text: fmt.Sprintf("microvm host --detached -f %s &   # keeps the firewall while VMs run; log in %s", file, in.Host.HostLog()),
		do:   func() error { return supervise.StartHost(bin, file, in.Host) },
	}
}

// Teardown is the VM part of teardown, in order: stop every VM that runs,
// in the file or gone from it (while its network is there for a clean
// shutdown), then the keeper of the firewall, before the table, which it
// would load again. vms are the VMs it considered: the file's and those
// gone from it.
func Teardown(w io.Writer, in *config.Infra, m supervise.Manager) (out []action.Action, vms []*config.VM, err error) {
	gone, err := Departed(in, m)
	if err != nil {
		return nil, nil, err
	}
	vms = gone
	for i := range in.VMs {
		vms = append(vms, &in.VMs[i])
	}
	for _, vm := range vms {
		if StateOf(m, vm).State != Stopped {
			out = append(out, vmAction{
				text: "microvm down " + vm.Name,
				do:   func() error { return StopVM(w, m, vm) },
			})
		}
	}
	if a := supervise.StopHostAction(in.Host); a != nil {
		out = append(out, a)
	}
	return out, vms, nil
}
