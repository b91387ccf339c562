package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
)

// VM is a real microVM running in the sandbox: `microvm run NAME` started
// in the host namespace, as its systemd unit would run it on a real host.
type VM struct {
	Name string
	Log  string // the supervisor's output
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartVM starts `bin run -f file name` in the host namespace, its output
// going to logPath.
func (s *Sandbox) StartVM(bin, file, name, logPath string) (*VM, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := Command(s.Host, bin, "run", "-f", file, name)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	v := &VM{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		v.err = cmd.Wait()
		log.Close()
		close(v.done)
	}()
	return v, nil
}

// Stop asks the supervisor to shut the guest down (SIGTERM, as systemctl
// stop does) and waits for it to exit, killing it after timeout.
func (v *VM) Stop(timeout time.Duration) error {
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
		return v.err
	case <-time.After(timeout):
		v.cmd.Process.Kill()
		<-v.done
		return fmt.Errorf("stopping %s: no exit in %s; killed", v.Name, timeout)
	}
}

// Done is closed when the supervisor has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Dial logs in to a running guest over its network, from the host
// namespace, waiting for its sshd until ctx ends.
func (s *Sandbox) Dial(ctx context.Context, vm *config.VM) (*ssh.Client, error) {
	var c *ssh.Client
	err := Do(s.Host, func() error {
		var err error
		c, err = guest.Dial(ctx, s.in.Host, vm)
		return err
	})
	return c, err
}
