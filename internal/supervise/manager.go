package supervise

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Manager starts and stops VM supervisors: through their systemd units
// where systemd is PID 1, or through detached keepers elsewhere.
type Manager interface {
	// Kind is how the manager keeps supervisors: KindSystemd or
	// KindDetached.
	Kind() Kind
	// Start starts vm's supervisor; it returns once it is started, not
	// once the guest has booted.
	Start(vm *config.VM) error
	// Stop stops vm's supervisor, which shuts the guest down cleanly.
	Stop(vm *config.VM) error
	// Active reports whether vm's unit or keeper is running: its
	// supervisor runs, or is being restarted.
	Active(vm *config.VM) bool
	// Enable makes vm start at boot, or not.
	Enable(vm *config.VM, on bool) error
}

// Kind is how a Manager keeps supervisors running, as info prints it.
type Kind string

const (
	KindSystemd  Kind = "systemd"  // a unit each, where systemd is PID 1
	KindDetached Kind = "detached" // a detached keeper each, elsewhere
)

// For returns the manager for this host: systemd if it is PID 1. bin is the
// microvm program and file the infra.toml, both made absolute.
func For(bin, file string) (Manager, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	if Booted() {
		return &systemdManager{bin: bin, file: abs}, nil
	}
	return &Detached{Bin: bin, File: abs}, nil
}

// Detached keeps VMs running without systemd.
type Detached struct{ Bin, File string }

func (d *Detached) Kind() Kind { return KindDetached }

// Start starts vm's keeper, and first the keeper of the firewall if none
// runs, as systemd starts microvm-host.service before a VM's unit.
func (d *Detached) Start(vm *config.VM) error {
	in, err := config.Load(d.File)
	if err != nil {
		return err
	}
	if err := StartHost(d.Bin, d.File, in.Host); err != nil {
		return err
	}
	_, err = StartDetached(d.Bin, d.File, vm)
	return err
}
func (d *Detached) Stop(vm *config.VM) error  { return StopDetached(vm, StopTimeout+10*time.Second) }
func (d *Detached) Active(vm *config.VM) bool { _, ok := KeeperPid(vm); return ok }

// Enable has nothing to do without systemd: nothing starts VMs at boot
// (apply does, when run again).
func (d *Detached) Enable(vm *config.VM, on bool) error { return nil }

type systemdManager struct{ bin, file string }

func (s *systemdManager) Kind() Kind { return KindSystemd }

// install writes the units (and the VMs' limits) if they changed, and
// reloads systemd.
func (s *systemdManager) install() error {
	in, err := config.Load(s.file)
	if err != nil {
		return err
	}
	u, err := Render(s.bin, s.file, in.VMs)
	if err != nil {
		return err
	}
	changed, err := u.Install(UnitDir)
	if err != nil {
		return err
	}
	if changed {
		if err := Systemctl("daemon-reload"); err != nil {
			return err
		}
		return Systemctl("enable", Target, HostUnit)
	}
	return nil
}

func (s *systemdManager) Start(vm *config.VM) error {
	if err := s.install(); err != nil {
		return err
	}
	return Systemctl("start", Unit(vm.Name))
}
func (s *systemdManager) Stop(vm *config.VM) error { return Systemctl("stop", Unit(vm.Name)) }
func (s *systemdManager) Active(vm *config.VM) bool {
	return Systemctl("is-active", "--quiet", Unit(vm.Name)) == nil
}
func (s *systemdManager) Enable(vm *config.VM, on bool) error {
	if err := s.install(); err != nil {
		return err
	}
	if on {
		return Systemctl("enable", Unit(vm.Name))
	}
	return Systemctl("disable", Unit(vm.Name))
}

// Lock is the lock held while VMs are started, stopped or changed, so that
// two applies (or an apply and an up) cannot run at once.
type Lock struct{ f *os.File }

// TakeLock takes h's lock, or says who holds it. It does not wait.
func TakeLock(h config.Host) (*Lock, error) {
	d, err := safedir.OpenPrivateAll(h.RunDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	name := filepath.Base(h.LockFile())
	f, err := d.Lock(name, false)
	if errors.Is(err, safedir.ErrLocked) {
		b, _ := d.ReadFile(name) // who holds it, a hint only
		who := strings.TrimSpace(string(b))
		if who == "" {
			who = "another microvm command"
		}
		return nil, fmt.Errorf("another microvm command is changing VMs (%s, lock %s); wait for it to finish", who, h.LockFile())
	}
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", h.LockFile(), err)
	}
	// Who holds the lock, for the message above; the lock holds without it.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+": "+strings.Join(os.Args, " ")+"\n"), 0)
	return &Lock{f: f}, nil
}

// Release lets the next command in.
func (l *Lock) Release() {
	if l != nil && l.f != nil {
		_ = l.f.Truncate(0) // the holder's name, a hint: the lock goes with Close
		l.f.Close()
		l.f = nil
	}
}
