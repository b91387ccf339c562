package cloudhypervisor

import (
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Program is Cloud Hypervisor's executable.
const Program = "cloud-hypervisor"

func init() {
	vmm.Register(vmm.Hypervisor{
		Name:     config.CloudHypervisor,
		Title:    "Cloud Hypervisor",
		Program:  Program,
		NeedsKVM: true,
		Console:  vmm.ConsoleLog, // --serial file=: no socket to type into
		Socket:   "api.sock",
		Virtiofs: true,
		New:      func(config.Accel) vmm.Backend { return New() },
	})
}
