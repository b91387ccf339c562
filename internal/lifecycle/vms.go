package lifecycle

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// StartTimeout is how long up, restart and apply wait for a VM's VMM to
// be running.
const StartTimeout = 90 * time.Second

// State is where a VM is in its life, as status prints it.
type State string

const (
	Running  State = "running"  // its VMM is up
	Starting State = "starting" // its supervisor runs without a VMM: booting, or restarting after a failure
	Orphaned State = "orphaned" // processes of it (a VMM, daemons) are left in its cgroup, without supervisor or keeper: down ends them
	Stopped  State = "stopped"  // nothing of it runs
)

// VMState is a VM's state as status prints it.
type VMState struct {
	State   State
	Started runner.Started
	Since   time.Duration // uptime, when running
}

// StateOf reads vm's state: running once its VMM is up (the supervisor
// records it, with the start times of both processes, which must match),
// starting while a supervisor runs without a VMM (booting, or restarting
// after a failure), orphaned while processes are left in its cgroup with
// neither supervisor nor keeper (both were killed), stopped otherwise.
func StateOf(m supervise.Manager, vm *config.VM) VMState {
	// A record that cannot be read says nothing runs: the supervisor's
	// state decides between starting and stopped.
	st, ok, _ := runner.ReadStarted(vm)
	if ok && st.VMM().Alive() && st.Run().Alive() {
		return VMState{State: Running, Started: st, Since: time.Since(st.Time)}
	}
	if m.Active(vm) {
		return VMState{State: Starting}
	}
	if len(supervise.Leftovers(vm)) > 0 {
		return VMState{State: Orphaned}
	}
	return VMState{State: Stopped}
}

// StartVM starts vm's supervisor and waits until its VMM is up (not until
// the guest has booted), or the supervisor fails.
func StartVM(w io.Writer, in *config.Infra, m supervise.Manager, vm *config.VM, timeout time.Duration) error {
	if err := runner.Preflight(in, vm); err != nil {
		return err
	}
	began := time.Now()
	if err := m.Start(vm); err != nil {
		return err
	}
	for time.Since(began) < timeout {
		s := StateOf(m, vm)
		if s.State == Running {
			fmt.Fprintf(w, "%s started: %s pid %d, %s; it boots in the background (microvm logs %s --console)\n",
				vm.Name, vm.Hypervisor, s.Started.VMMPid, vm.Addr, vm.Name)
			return nil
		}
		if s.State == Stopped {
			return fmt.Errorf("%s failed to start; its log ends:\n%s", vm.Name, LogTail(m, vm, 15))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s is still starting after %s; follow it with: microvm logs -f %s", vm.Name, timeout, vm.Name)
}

// StopVM stops vm's supervisor, which shuts the guest down cleanly.
func StopVM(w io.Writer, m supervise.Manager, vm *config.VM) error {
	return StopVMWithin(w, m, vm, 0, false)
}

// StopVMWithin is StopVM with a limit: if the guest has not shut down
// after timeout (0: no limit), or at once with force, its VMM is killed,
// as a power cut would stop it. The supervisor, already told to stop, then
// stops the virtiofs daemons and exits without a restart.
func StopVMWithin(w io.Writer, m supervise.Manager, vm *config.VM, timeout time.Duration, force bool) error {
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
	fmt.Fprintf(w, "%s %s in %s\n", vm.Name, how, time.Since(began).Round(100*time.Millisecond))
	return nil
}

// stopSupervisor asks vm's supervisor to stop and waits until it has;
// then, without systemd, what is left in its cgroup is killed.
func stopSupervisor(m supervise.Manager, vm *config.VM, began time.Time) error {
	if m.Active(vm) {
		return m.Stop(vm)
	}
	if s := StateOf(m, vm); s.State == Running {
		// A supervisor whose keeper is gone (killed): stop it directly.
		run := s.Started.Run()
		if err := run.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, proc.ErrGone) {
			return fmt.Errorf("stopping %s (supervisor %s): %w", vm.Name, run, err)
		}
		if err := supervise.WaitGone(run, supervise.StopTimeout, fmt.Sprintf("%s did not stop in %s (supervisor %s)", vm.Name, supervise.StopTimeout, run)); err != nil {
			return err
		}
	}
	// What a killed keeper left: nothing after a clean stop; a VMM and
	// its daemons after a supervisor was killed too (they cannot be
	// shut down cleanly without it).
	return supervise.EndLeftovers(vm)
}

// LogTail is the end of vm's supervisor log.
func LogTail(m supervise.Manager, vm *config.VM, n int) string {
	if m.Kind() == supervise.KindSystemd {
		return fmt.Sprintf("(see journalctl -u %s)", supervise.Unit(vm.Name))
	}
	return supervise.TailOf(supervise.OpenSupervisorLog, vm, n)
}

// Changes lists what differs between what vm was started with and what it
// would start with now.
func Changes(in *config.Infra, vm *config.VM, st runner.Started) []string {
	now := runner.Settings(in, vm)
	if runner.Hash(now) == st.Hash {
		return nil
	}
	return runner.Changed(st.Settings, now)
}

// InState keeps the VMs whose state is one of states.
func InState(m supervise.Manager, vms []*config.VM, states ...State) []*config.VM {
	var out []*config.VM
	for _, vm := range vms {
		if slices.Contains(states, StateOf(m, vm).State) {
			out = append(out, vm)
		}
	}
	return out
}

// Restart stops vm if it runs or starts, and starts it again
// (microvm restart).
func Restart(w io.Writer, in *config.Infra, m supervise.Manager, vm *config.VM) error {
	if StateOf(m, vm).State != Stopped {
		if err := StopVM(w, m, vm); err != nil {
			return err
		}
	}
	return StartVM(w, in, m, vm, StartTimeout)
}

// Update restarts vm, if it runs, when what it would start with now
// differs from what it was started with (microvm update), taking a
// snapshot of its data between the stop and the start where the storage
// does.
func Update(w io.Writer, in *config.Infra, m supervise.Manager, vm *config.VM) error {
	s := StateOf(m, vm)
	if s.State != Running {
		fmt.Fprintf(w, "%s is %s; it starts with the file's settings next time (microvm up %s)\n", vm.Name, s.State, vm.Name)
		return nil
	}
	ch := Changes(in, vm, s.Started)
	if len(ch) == 0 {
		fmt.Fprintf(w, "%s is up to date; not restarted\n", vm.Name)
		return nil
	}
	if err := runner.Preflight(in, vm); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s changed: %s; restarting\n", vm.Name, strings.Join(ch, ", "))
	if err := StopVM(w, m, vm); err != nil {
		return err
	}
	if snap, err := storage.SnapshotBeforeChange(in.Host, vm, "update"); err != nil {
		return fmt.Errorf("%w\n%s is stopped; start it with: microvm up %s", err, vm.Name, vm.Name)
	} else if snap != "" {
		fmt.Fprintf(w, "%s: snapshot %s taken\n", vm.Name, snap)
	}
	return StartVM(w, in, m, vm, StartTimeout)
}

// WaitReady waits until vm's guest is ready (its supervisor saw its sshd
// answer) or deadline passes (up --wait).
func WaitReady(w io.Writer, m supervise.Manager, vm *config.VM, deadline time.Time) error {
	for {
		s := StateOf(m, vm)
		switch {
		case s.State == Running && s.Started.Ready != nil:
			fmt.Fprintf(w, "%s ready: sshd answers on %s, %s after its VMM started\n",
				vm.Name, vm.Addr, s.Started.Ready.Sub(s.Started.Time).Round(100*time.Millisecond))
			return nil
		case s.State == Stopped:
			return fmt.Errorf("%s stopped while booting; its log ends:\n%s", vm.Name, LogTail(m, vm, 15))
		case time.Now().After(deadline):
			return fmt.Errorf("%s is not ready by --wait-timeout: it is %s and its sshd does not answer; watch it with: microvm logs --console %s", vm.Name, s.State, vm.Name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
