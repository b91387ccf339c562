package qemu

import (
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Program is QEMU's executable for x86-64 guests.
const Program = "qemu-system-x86_64"

func init() {
	vmm.Register(vmm.Hypervisor{
		Name:     config.QEMU,
		Title:    "QEMU",
		Program:  Program,
		NeedsKVM: false, // -accel tcg emulates
		Console:  vmm.ConsoleSocket,
		Socket:   "qmp.sock",
		Virtiofs: true,
		New:      func(accel config.Accel) vmm.Backend { return New(accel) },
	})
}
