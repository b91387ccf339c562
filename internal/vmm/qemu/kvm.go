package qemu

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// CheckKVM starts a paused microvm under KVM and reports whether it stays
// up. /dev/kvm existing is not enough: on some virtual machines (nested
// virtualization without the MSRs QEMU sets) QEMU aborts as soon as it
// creates the vCPU. The demo uses it to choose between kvm and tcg.
func CheckKVM() error {
	cmd := exec.Command(Program, "-M", "microvm", "-accel", "kvm", "-cpu", "host,-sgx",
		"-m", "64", "-nodefaults", "-display", "none", "-S")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting QEMU: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return fmt.Errorf("QEMU cannot run guests with KVM here: %v: %s", err, strings.TrimSpace(out.String()))
	case <-time.After(time.Second):
		_ = cmd.Process.Kill() // it ran a second: KVM works; if it just exited, Wait below returns anyway
		<-done
		return nil
	}
}
