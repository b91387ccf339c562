// Package cloudhypervisor is the Cloud Hypervisor backend of package vmm:
// the cloud-hypervisor command line built from the model, and a client of
// its REST API to stop it.
//
// The options are those of cloud-hypervisor --help (checked against its
// source, v28 to v53): each device option is repeated once per device
// (--fs A --fs B), a form every release accepts and v30 to v35 required. Devices are PCI, so the guest needs
// virtio_pci; the serial port is the legacy 8250 (ttyS0), written to the
// supervisor's console pipe; the virtio console (hvc0) is off.
package cloudhypervisor

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Backend runs Cloud Hypervisor.
type Backend struct {
	Binary string        // the program; "cloud-hypervisor", looked up in PATH, if empty
	Grace  time.Duration // how long the guest has to act on the power button; vmm.DefaultGrace if zero
}

// New returns the backend with its defaults.
func New() *Backend { return &Backend{} }

// Command returns the cloud-hypervisor command that boots s.
func (b *Backend) Command(s vmm.Spec) (*exec.Cmd, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	vm := s.VM
	args := []string{
		"--api-socket", "path=" + vm.ControlSocket(),
		"--kernel", s.Kernel,
		"--initramfs", s.Initramfs,
		"--cmdline", vmm.Cmdline(vm),
		"--cpus", fmt.Sprintf("boot=%d", vm.VCPU),
		// virtiofs needs guest memory the daemons can map: shared=on.
		"--memory", fmt.Sprintf("size=%dM,shared=on", vm.MemoryMiB),
	}
	for _, sh := range s.Shares {
		// One request queue of 1024 entries: the queue size virtiofsd
		// supports at most, and the default of Cloud Hypervisor's API.
		args = append(args, "--fs", fmt.Sprintf("tag=%s,socket=%s,num_queues=1,queue_size=1024", sh.Tag, sh.Socket))
	}
	for i, path := range s.VolumePaths() {
		args = append(args, "--disk", fmt.Sprintf("path=%s,serial=%s", path, s.Volumes[i].Name))
	}
	// num_queues counts RX and TX queues: two per queue pair. Above one
	// pair Cloud Hypervisor opens the TAP multi_queue, as it was created.
	net := fmt.Sprintf("tap=%s,mac=%s", vm.TAP, vm.MAC)
	if fds := s.TAPFds(); len(fds) > 0 {
		// Descriptors opened by the supervisor (vmm.OpenTAP), one per queue pair.
		strs := make([]string, len(fds))
		for i, fd := range fds {
			strs[i] = fmt.Sprint(fd)
		}
		net = fmt.Sprintf("fd=[%s],mac=%s", strings.Join(strs, ","), vm.MAC)
	}
	if q := vm.TAPQueues(); q > 1 {
		net += fmt.Sprintf(",num_queues=%d", 2*q)
	}
	// The serial console goes into the pipe the supervisor reads
	// (Spec.Console): Cloud Hypervisor opens the file it is given, here
	// the descriptor it inherited, through /proc.
	serial := "off"
	if fd := s.ConsoleFd(); fd >= 0 {
		serial = fmt.Sprintf("file=/proc/self/fd/%d", fd)
	}
	args = append(args,
		"--net", net,
		"--serial", serial,
		"--console", "off",
	)
	return vmm.NewCmd(b.Binary, Program, s, args), nil
}

// Ping returns nil if the API answers.
func (b *Backend) Ping(ctx context.Context, vm *config.VM, pid int) error {
	_, err := NewClient(vm.ControlSocket(), pid).Ping(ctx)
	return err
}

// StopSteps: the ACPI power button, which a guest running systemd-logind
// (or acpid) turns into a clean poweroff; then shutting the VM down from
// the VMM (vm.shutdown, at once, like pulling the power cord) and making the
// VMM exit (vmm.shutdown). Cloud Hypervisor exits by itself when its guest
// powers off.
func (b *Backend) StopSteps(vm *config.VM, pid int) []vmm.Step {
	c := NewClient(vm.ControlSocket(), pid)
	grace := b.Grace
	if grace == 0 {
		grace = vmm.DefaultGrace
	}
	return []vmm.Step{
		{Name: "PUT /api/v1/vm.power-button", Do: c.PowerButton, Grace: grace},
		{Name: "PUT /api/v1/vm.shutdown, then /api/v1/vmm.shutdown", Grace: vmm.HardGrace,
			Do: func(ctx context.Context) error {
				// vm.shutdown fails when the VM is not running (404, 405):
				// the VMM must go all the same.
				return errors.Join(c.Shutdown(ctx), c.ShutdownVMM(ctx))
			}},
	}
}
