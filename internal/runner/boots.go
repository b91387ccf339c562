package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Boots is what the supervisors of a VM keep about its boots, across
// their own restarts, for its metrics (package metrics): in
// vm.BootsFile(), which only root writes, replaced at once at each change.
//
// A restart is a VMM started after the previous one died: it crashed, was
// killed, or its supervisor was, and systemd or the keeper started the
// supervisor again. A stop that was asked for (down, restart, update, a
// shutdown of the host) and a guest that powered off are not followed by
// a restart. Up tells them apart: it is set when a VMM starts and cleared
// when it stops as asked, so a VMM that starts while it is still set
// follows one that died.
type Boots struct {
	Starts   int  `json:"starts"`   // VMMs started
	Restarts int  `json:"restarts"` // of them, after the previous one died
	Up       bool `json:"up"`       // a VMM was started and not stopped as asked since
	// LastReady is how long the last boot that got that far took from
	// its VMM's start until its sshd answered; 0 before any.
	LastReady time.Duration `json:"last_ready_ns,omitempty"`
	// LastStart is when the last VMM started.
	LastStart time.Time `json:"last_start,omitzero"`
}

// ReadBoots reads vm's boot record; a VM never started has none, which
// is all zeros. It is read only from a run directory that root alone can
// write.
func ReadBoots(vm *config.VM) (Boots, error) {
	var b Boots
	d, err := safedir.OpenPrivate(vm.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return b, err
	}
	defer d.Close()
	data, err := d.ReadFile(filepath.Base(vm.BootsFile()))
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return b, err
	}
	if err := json.Unmarshal(data, &b); err != nil {
		return Boots{}, fmt.Errorf("reading %s: %w", vm.BootsFile(), err)
	}
	return b, nil
}

// updateBoots changes vm's boot record in run, its run directory. Only
// the VM's one supervisor (it holds vm.RunLock()) writes it.
func updateBoots(run *safedir.Dir, vm *config.VM, change func(*Boots)) error {
	b, err := ReadBoots(vm)
	if err != nil {
		b = Boots{} // a record that cannot be read starts again
	}
	change(&b)
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return run.WriteFile(filepath.Base(vm.BootsFile()), append(data, '\n'), 0o644)
}

// bootStarted records that a VMM of vm started at t.
func bootStarted(run *safedir.Dir, vm *config.VM, t time.Time) error {
	return updateBoots(run, vm, func(b *Boots) {
		b.Starts++
		if b.Up {
			b.Restarts++
		}
		b.Up = true
		b.LastStart = t.UTC()
	})
}

// bootReady records that the guest booted by the VMM started at began was
// ready at t.
func bootReady(run *safedir.Dir, vm *config.VM, began, t time.Time) error {
	return updateBoots(run, vm, func(b *Boots) { b.LastReady = t.Sub(began) })
}

// bootStopped records that vm's VMM stopped as asked (or its guest
// powered off): the next start is not a restart.
func bootStopped(run *safedir.Dir, vm *config.VM) error {
	return updateBoots(run, vm, func(b *Boots) { b.Up = false })
}
