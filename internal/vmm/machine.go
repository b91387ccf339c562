package vmm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Backend is one VMM: how to run it and how to stop it.
type Backend interface {
	// Command returns the command that boots s. It changes nothing on
	// the host; the caller may still set the command's user and output
	// before passing it to [Start].
	Command(s Spec) (*exec.Cmd, error)
	// Ping returns nil if the VMM, process pid, answers on vm's control
	// socket.
	Ping(ctx context.Context, vm *config.VM, pid int) error
	// StopSteps are the ways to stop vm's VMM, process pid, gentlest
	// first. [Machine.Stop] tries them in turn and kills the process when
	// none has worked.
	StopSteps(vm *config.VM, pid int) []Step
}

// Step is one way of stopping a VMM.
type Step struct {
	Name  string                          // what it does, for the log: "QMP quit"
	Do    func(ctx context.Context) error // ask; the VMM's exit is the answer
	Grace time.Duration                   // how long the VMM then has to exit
}

// Grace periods of the steps: the guest's own shutdown gets DefaultGrace
// unless a backend is told otherwise; asking the VMM itself to stop the VM
// gets HardGrace.
const (
	DefaultGrace = 30 * time.Second
	HardGrace    = 5 * time.Second
)

// ErrKilled is returned by [Machine.Stop] when no step stopped the VMM and it
// was killed: the guest did not shut down cleanly.
var ErrKilled = errors.New("VMM killed")

// Machine is a running VMM process.
type Machine struct {
	VM      *config.VM
	Logf    func(format string, args ...any) // what Stop does, step by step; nil is silent
	backend Backend
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	// Graceful is set by Stop when its first step, the guest's own
	// shutdown, stopped the VMM.
	Graceful bool
}

// Start starts cmd, which b.Command returned for vm, with no_new_privs
// set: the VMM never gains a privilege by running another program.
//
// A control socket left by an earlier run is removed first (Cloud
// Hypervisor refuses to start on one), unless it answers: then a VMM of the
// same VM is running, and Start refuses to start a second.
func Start(b Backend, vm *config.VM, cmd *exec.Cmd) (*Machine, error) {
	sock := vm.ControlSocket()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	c, err := Dial(ctx, sock, 0)
	cancel()
	if err == nil {
		c.Close()
		return nil, fmt.Errorf("starting %s: its control socket %s answers: is it already running?", vm.Name, sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("starting %s: removing stale socket: %w", vm.Name, err)
	}
	m := &Machine{VM: vm, backend: b, cmd: cmd, done: make(chan struct{})}
	if err := startNoNewPrivs(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", vm.Name, err)
	}
	go func() {
		m.err = cmd.Wait()
		close(m.done)
	}()
	return m, nil
}

// Pid is the VMM's process ID.
func (m *Machine) Pid() int { return m.cmd.Process.Pid }

// Done is closed when the VMM has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Wait waits for the VMM to exit and returns how it did.
func (m *Machine) Wait() error {
	<-m.done
	return m.err
}

// Ready returns nil once the VMM answers on its control socket, or an error
// when it exits first or ctx ends.
func (m *Machine) Ready(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := m.backend.Ping(pctx, m.VM, m.Pid())
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-m.done:
			return fmt.Errorf("waiting for %s's VMM: it exited: %v", m.VM.Name, m.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s's VMM: %w (last error: %v)", m.VM.Name, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Stop stops the VMM: it tries the backend's steps in turn, each until the
// VMM exits or the step's grace ends, and kills the process (SIGKILL) when
// none worked or ctx ends. It returns once the process is gone: nil if a
// step stopped it, [ErrKilled] if it had to be killed.
func (m *Machine) Stop(ctx context.Context) error {
	for i, s := range m.backend.StopSteps(m.VM, m.Pid()) {
		if m.exited() || ctx.Err() != nil {
			break
		}
		m.logf("stopping %s: %s (waiting up to %s)", m.VM.Name, s.Name, s.Grace)
		sctx, cancel := context.WithTimeout(ctx, s.Grace)
		if err := s.Do(sctx); err != nil && !m.exited() {
			m.logf("stopping %s: %s: %v", m.VM.Name, s.Name, err)
		}
		select {
		case <-m.done:
			m.Graceful = i == 0
		case <-sctx.Done():
		}
		cancel()
	}
	if m.exited() {
		return nil
	}
	m.logf("stopping %s: SIGKILL", m.VM.Name)
	if err := m.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s: %w", m.VM.Name, err)
	}
	<-m.done
	return fmt.Errorf("stopping %s: %w", m.VM.Name, ErrKilled)
}

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

func (m *Machine) logf(format string, args ...any) {
	if m.Logf != nil {
		m.Logf(format, args...)
	}
}
