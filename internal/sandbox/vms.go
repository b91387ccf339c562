package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
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
	_ = v.cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited, which done tells
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

// Boot starts every VM of the sandbox's model (`bin run -f file NAME`, logs
// in logDir) and logs in to each, all at once, as after a host reboot. ready
// is called as each VM answers SSH. On error, the VMs already started are
// returned too, for the caller to stop.
func (s *Sandbox) Boot(bin, file, logDir string, timeout time.Duration, ready func(name string, after time.Duration)) (map[string]*VM, map[string]*ssh.Client, error) {
	began := time.Now()
	vms := map[string]*VM{}
	for _, vm := range s.in.VMs {
		v, err := s.StartVM(bin, file, vm.Name, filepath.Join(logDir, vm.Name+".log"))
		if err != nil {
			return vms, nil, err
		}
		vms[vm.Name] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	clients := map[string]*ssh.Client{}
	var errs []error
	for i := range s.in.VMs {
		vm := &s.in.VMs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Dial(ctx, vm)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%w\n%s's console ends:\n%s", err, vm.Name, Console(vm, 25)))
				return
			}
			clients[vm.Name] = c
			if ready != nil {
				ready(vm.Name, time.Since(began))
			}
		}()
	}
	wg.Wait()
	return vms, clients, errors.Join(errs...)
}

// Console returns the end of vm's console log, n lines, read as the
// program reads it: without following anything its VMM could have put in
// its place (supervise.OpenConsoleLog).
func Console(vm *config.VM, n int) string {
	return supervise.TailOf(supervise.OpenConsoleLog, vm, n)
}
