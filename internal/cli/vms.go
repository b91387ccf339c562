package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/systemd"
)

// What the lifecycle commands (up, down, restart, update, status, apply)
// share: finding the named VMs, the manager that starts and stops their
// supervisors (systemd, or detached keepers), and each VM's state.

// vmState is a VM's state as status prints it.
type vmState struct {
	State   string // running, starting, stopped
	Started runner.Started
	Since   time.Duration // uptime, when running
}

// stateOf reads vm's state: running once its VMM is up (the supervisor
// records it, with the start times of both processes, which must match),
// starting while a supervisor runs without a VMM (booting, or restarting
// after a failure), stopped otherwise.
func stateOf(m systemd.Manager, vm *config.VM) vmState {
	// A record that cannot be read says nothing runs: the supervisor's
	// state decides between starting and stopped.
	st, ok, _ := runner.ReadStarted(vm)
	if ok && st.VMM().Alive() && st.Run().Alive() {
		return vmState{State: "running", Started: st, Since: time.Since(st.Time)}
	}
	if m.Active(vm) {
		return vmState{State: "starting"}
	}
	return vmState{State: "stopped"}
}

// manager returns how VMs are kept running on this host.
func (e *env) manager() (systemd.Manager, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return systemd.For(bin, e.file)
}

// namedVMs returns the VMs called names, all of them if names is empty and
// all is true.
func namedVMs(in *config.Infra, names []string, all bool) ([]*config.VM, error) {
	if len(names) == 0 {
		if !all {
			return nil, fmt.Errorf("%w: name one or more VMs", errUsage)
		}
		var out []*config.VM
		for i := range in.VMs {
			out = append(out, &in.VMs[i])
		}
		return out, nil
	}
	var out []*config.VM
	for _, n := range names {
		vm, ok := in.VM(n)
		if !ok {
			var have []string
			for _, v := range in.VMs {
				have = append(have, v.Name)
			}
			return nil, fmt.Errorf("no VM %q in %s (it has %s)", n, in.File, strings.Join(have, ", "))
		}
		out = append(out, vm)
	}
	return out, nil
}

// startVM starts vm's supervisor and waits until its VMM is up (not until
// the guest has booted), or the supervisor fails.
func startVM(e *env, in *config.Infra, m systemd.Manager, vm *config.VM, timeout time.Duration) error {
	if err := runner.Preflight(in, vm); err != nil {
		return err
	}
	began := time.Now()
	if err := m.Start(vm); err != nil {
		return err
	}
	for time.Since(began) < timeout {
		s := stateOf(m, vm)
		if s.State == "running" {
			fmt.Fprintf(e.stdout, "%s started: %s pid %d, %s; it boots in the background (microvm logs %s --console)\n",
				vm.Name, vm.Hypervisor, s.Started.VMMPid, vm.Addr, vm.Name)
			return nil
		}
		if s.State == "stopped" {
			return fmt.Errorf("%s failed to start; its log ends:\n%s", vm.Name, logTail(m, vm, 15))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s is still starting after %s; follow it with: microvm logs -f %s", vm.Name, timeout, vm.Name)
}

// stopVM stops vm's supervisor, which shuts the guest down cleanly.
func stopVM(e *env, m systemd.Manager, vm *config.VM) error {
	return stopVMWithin(e, m, vm, 0, false)
}

// stopVMWithin is stopVM with a limit: if the guest has not shut down
// after timeout (0: no limit), or at once with force, its VMM is killed,
// as a power cut would stop it. The supervisor, already told to stop, then
// stops the virtiofs daemons and exits without a restart.
func stopVMWithin(e *env, m systemd.Manager, vm *config.VM, timeout time.Duration, force bool) error {
	began := time.Now()
	// Without a record (or an unreadable one) there is no VMM to wait for.
	st, _, _ := runner.ReadStarted(vm)
	done := make(chan error, 1)
	go func() { done <- stopSupervisor(m, vm, began) }()
	var limit <-chan time.Time
	switch {
	case force:
		// Time for the stop request to reach the supervisor first.
		limit = time.After(200 * time.Millisecond)
	case timeout > 0:
		limit = time.After(timeout)
	}
	how := "stopped"
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-limit:
		if vmm := st.VMM(); vmm.Alive() {
			if err := vmm.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, proc.ErrGone) {
				return fmt.Errorf("killing the VMM of %s (%s): %w", vm.Name, vmm, err)
			}
			how = "killed (its VMM, pid " + strconv.Itoa(st.VMMPid) + ")"
			if !force {
				how = fmt.Sprintf("not shut down in %s: killed (its VMM, pid %d)", timeout, st.VMMPid)
			}
		}
		if err := <-done; err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "%s %s in %s\n", vm.Name, how, time.Since(began).Round(100*time.Millisecond))
	return nil
}

// stopSupervisor asks vm's supervisor to stop and waits until it has.
func stopSupervisor(m systemd.Manager, vm *config.VM, began time.Time) error {
	if m.Active(vm) {
		return m.Stop(vm)
	}
	if s := stateOf(m, vm); s.State == "running" {
		// A supervisor whose keeper is gone (killed): stop it directly.
		run := s.Started.Run()
		if err := run.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, proc.ErrGone) {
			return fmt.Errorf("stopping %s (supervisor %s): %w", vm.Name, run, err)
		}
		if err := systemd.WaitGone(run, systemd.StopTimeout, fmt.Sprintf("%s did not stop in %s (supervisor %s)", vm.Name, systemd.StopTimeout, run)); err != nil {
			return err
		}
	}
	return nil
}

// logTail is the end of vm's supervisor log.
func logTail(m systemd.Manager, vm *config.VM, n int) string {
	if m.Kind() == "systemd" {
		return fmt.Sprintf("(see journalctl -u %s)", systemd.Unit(vm.Name))
	}
	f, err := openLog(vm, false)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, _ := io.ReadAll(f) // what was read before an error is still the end to show
	return systemd.Tail(b, n)
}

// lifecycle loads the file and takes the lock, for commands that start or
// stop VMs. The caller releases the lock.
func (e *env) lifecycle() (*config.Infra, systemd.Manager, *systemd.Lock, error) {
	in, err := e.load()
	if err != nil {
		return nil, nil, nil, err
	}
	if os.Geteuid() != 0 {
		return nil, nil, nil, fmt.Errorf("starting and stopping VMs needs root (their network, mounts and VMM user); run it with sudo")
	}
	m, err := e.manager()
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := systemd.TakeLock(in.Host)
	if err != nil {
		return nil, nil, nil, err
	}
	return in, m, l, nil
}

// oneVM reads the file and finds the one VM named in args.
func (e *env) oneVM(args []string) (*config.Infra, *config.VM, error) {
	if len(args) != 1 {
		return nil, nil, fmt.Errorf("%w: name one VM", errUsage)
	}
	in, err := e.load()
	if err != nil {
		return nil, nil, err
	}
	vms, err := namedVMs(in, args, false)
	if err != nil {
		return nil, nil, err
	}
	return in, vms[0], nil
}

// lifecycleOf is lifecycle for the VMs named in args (one at least), or
// with all for every VM of the file, for up, down, restart and update. The
// caller releases the lock.
func (e *env) lifecycleOf(args []string, all bool) (*config.Infra, systemd.Manager, []*config.VM, *systemd.Lock, error) {
	switch {
	case all && len(args) > 0:
		return nil, nil, nil, nil, fmt.Errorf("%w: name VMs or give --all, not both", errUsage)
	case !all && len(args) == 0:
		return nil, nil, nil, nil, fmt.Errorf("%w: name one or more VMs, or give --all", errUsage)
	}
	in, m, lock, err := e.lifecycle()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	vms, err := namedVMs(in, args, all)
	if err != nil {
		lock.Release()
		return nil, nil, nil, nil, err
	}
	return in, m, vms, lock, nil
}

// uptime prints a duration for a person: 45s, 12m, 3h04m, 2d05h.
func uptime(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }

// changes lists what differs between what vm was started with and what it
// would start with now.
func changes(in *config.Infra, vm *config.VM, st runner.Started) []string {
	now := runner.Settings(in, vm)
	if runner.Hash(now) == st.Hash {
		return nil
	}
	return runner.Changed(st.Settings, now)
}

// inState keeps the VMs whose state is one of states.
func inState(m systemd.Manager, vms []*config.VM, states ...string) []*config.VM {
	var out []*config.VM
	for _, vm := range vms {
		if slices.Contains(states, stateOf(m, vm).State) {
			out = append(out, vm)
		}
	}
	return out
}
