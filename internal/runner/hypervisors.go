package runner

import (
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"

	// The hypervisors the supervisor can run: each registers itself in
	// vmm's registry.
	_ "github.com/simple-microvm-infra/microvm/internal/vmm/cloudhypervisor"
	_ "github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// backendFor returns the backend of vm's hypervisor, for the host's
// accelerator.
func backendFor(in *config.Infra, vm *config.VM) (vmm.Backend, error) {
	h, err := vmm.For(in, vm)
	if err != nil {
		return nil, err
	}
	return h.New(in.Host.Accel), nil
}
