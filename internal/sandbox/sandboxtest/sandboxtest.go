// Package sandboxtest boots real microVMs in a sandbox for a test, the way
// the end-to-end tests all do: together, as after a host reboot, waiting
// for SSH long enough for emulated guests, stopped cleanly when the test
// ends, with each VM's supervisor log and console shown when it failed;
// and it measures the promise matrix from inside them.
package sandboxtest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// SSHWait is how long a test waits for a guest's SSH: under TCG on a
// busy 2-core machine, 4 guests booting together take up to 3 minutes.
const SSHWait = 8 * time.Minute

// Boot starts every VM of in with `bin run` (the microvm binary), its
// supervisor's log in logs/NAME.log, and waits until each answers SSH. The
// VMs still in the returned map when the test ends are stopped then, so a
// test that stops or restarts one updates the map; the sandbox must close
// after that (register its Close with t.Cleanup before calling Boot).
func Boot(t testing.TB, sb *sandbox.Sandbox, in *config.Infra, bin, file, logs string) (map[string]*sandbox.VM, map[string]*ssh.Client) {
	t.Helper()
	vms, clients, err := sb.Boot(bin, file, logs, SSHWait, func(name string, after time.Duration) {
		t.Logf("%s: SSH ready %s after start", name, after.Round(100*time.Millisecond))
	})
	t.Cleanup(func() {
		for name, v := range vms {
			if err := v.Stop(60 * time.Second); err != nil {
				t.Errorf("stopping %s: %v", name, err)
			}
		}
		if t.Failed() {
			for _, vm := range in.VMs {
				Dump(t, vm, filepath.Join(logs, vm.Name+".log"))
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return vms, clients
}

// Login waits up to SSHWait for vm's SSH, from the sandbox's host.
func Login(t testing.TB, sb *sandbox.Sandbox, vm *config.VM) *ssh.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), SSHWait)
	defer cancel()
	c, err := sb.Dial(ctx, vm)
	if err != nil {
		t.Fatalf("%s: %v", vm.Name, err)
	}
	return c
}

// Dump logs the end of vm's supervisor log (at log) and console.
func Dump(t testing.TB, vm config.VM, log string) {
	sup, _ := os.ReadFile(log)
	t.Logf("%s supervisor:\n%s\n%s console (end):\n%s", vm.Name, supervise.Tail(sup, 20), vm.Name, sandbox.Console(&vm, 30))
}

// Promises measures the promise matrix of in with p (from inside the
// guests, with a check.GuestProber), logs the table, and fails t if a
// promise does not hold.
func Promises(t testing.TB, sb *sandbox.Sandbox, in *config.Infra, p check.Prober) {
	t.Helper()
	r := check.Run(in, p, sb.Target())
	var b bytes.Buffer
	r.Print(&b)
	t.Logf("measured from inside the guests:\n%s", b.String())
	if !r.OK() {
		t.Error("a promise does not hold (table above)")
	}
}

// New makes a sandbox for in, closed when the test ends.
func New(t testing.TB, in *config.Infra) *sandbox.Sandbox {
	t.Helper()
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb
}
