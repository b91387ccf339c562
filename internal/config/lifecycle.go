package config

import "path/filepath"

// Lifecycle paths: what `microvm up` and `apply` keep about a VM they
// started, and the lock that keeps two of them from running at once. They
// are in the root-only part of the run directory (see runtime.go): the VMM
// cannot write them, and every pid in them comes with its process's start
// time, checked before a signal is sent. Derived here, like every other
// name.
//
//	RUN_DIR/microvm.lock        held by apply, up, down, restart, update, destroy
//	RUN_DIR/NAME/keeper.pid     the keeper of the supervisor (hosts without systemd): "PID START"
//	RUN_DIR/NAME/supervisor.log what `microvm run NAME` printed, when detached (root's only, 0600; and supervisor.log.1)
//	RUN_DIR/NAME/started.json   what the running VM was started with (settings, hash, time, VMM and supervisor)
//	RUN_DIR/NAME/run.lock       held by the `microvm run NAME` that supervises the VM
//	RUN_DIR/NAME/cgroup.json    where the keeper made the VM's cgroup (limits.go), while it is there
//	RUN_DIR/NAME/console.log    the guest's serial console, from its last start (and console.log.1 before it)
//	RUN_DIR/NAME/boots.json     its starts, restarts and last time to ready, for the metrics (BootsFile)

// LockFile is the lock held while VMs are started, stopped or changed.
func (h Host) LockFile() string { return filepath.Join(h.RunDir, "microvm.lock") }

// KeeperPidFile holds the pid of the detached keeper that runs and restarts
// `microvm run NAME` on hosts without systemd.
func (vm *VM) KeeperPidFile() string { return filepath.Join(vm.RunDir, "keeper.pid") }

// SupervisorLog is the output of `microvm run NAME` when detached (under
// systemd it goes to the journal).
func (vm *VM) SupervisorLog() string { return filepath.Join(vm.RunDir, "supervisor.log") }

// RunLock is held by `microvm run NAME` for as long as it supervises the
// VM, so that a second one is refused before it touches the first's files.
func (vm *VM) RunLock() string { return filepath.Join(vm.RunDir, "run.lock") }

// StartedFile records what the running VM was started with, so apply
// restarts exactly the VMs whose effective settings changed.
func (vm *VM) StartedFile() string { return filepath.Join(vm.RunDir, "started.json") }

// ConsoleSocket is the guest's serial console as a Unix socket, for
// `microvm console` (QEMU; the same output also goes to ConsoleLog).
func (vm *VM) ConsoleSocket() string { return filepath.Join(vm.VMMDir(), "console.sock") }
