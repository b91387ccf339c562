package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// CheckKVM boots kernel (a Linux vmlinux, such as an image's) under KVM
// until it prints its first console line, and reports whether it did
// within a few seconds: with KVM that takes well under a second. /dev/kvm
// existing is not enough, nor a paused VM that QEMU keeps up: on some
// virtual machines (nested virtualization) QEMU aborts when it creates the
// vCPU, and on others it runs, but the guest never executes. The demo and
// the benchmarks use it to choose between kvm and tcg.
func CheckKVM(kernel string) error {
	cmd := exec.Command(Program, "-M", "microvm", "-accel", "kvm", "-cpu", "host,-sgx",
		"-m", "128", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-kernel", kernel, "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting QEMU: %w", err)
	}
	printed := make(chan bool, 1)
	go func() {
		_, err := bufio.NewReader(out).ReadString('\n')
		printed <- err == nil
	}()
	var ok, timedOut bool
	select {
	case ok = <-printed:
	case <-time.After(10 * time.Second):
		timedOut = true
	}
	// Done with it either way; its exit status tells nothing more.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	switch {
	case ok:
		return nil
	case timedOut:
		return errors.New("a guest under KVM printed nothing in 10 s: /dev/kvm is there, but its vCPUs do not run (nested virtualization?)")
	default:
		return fmt.Errorf("QEMU cannot run guests with KVM here: %s", strings.TrimSpace(stderr.String()))
	}
}
