// Package e2e boots the design's 4 microVMs for real, under QEMU, in a sandbox
// of network namespaces, and proves the design's promises from inside the
// guests over SSH (tier 3 of DESIGN.md).
package e2e

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// setup writes the design's infra.toml for this machine: QEMU under TCG,
// state in the test image's cache, run files in a short fresh directory.
func setup(t *testing.T) (*config.Infra, string) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go")
	host := imagetest.Debian(t)
	run := testenv.RunDir(t, "mvt")
	var b strings.Builder
	fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\n", host.StateDir, run)
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n")
	for i := 1; i <= 4; i++ {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = \"10.%d.0.0/24\"\n", i, i)
	}
	file := filepath.Join(t.TempDir(), "infra.toml")
	os.WriteFile(file, []byte(b.String()), 0o644)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	// Every run starts from fresh VM state; the image is shared.
	for _, vm := range in.VMs {
		if err := storage.RemoveState(vm.StateDir); err != nil {
			t.Fatal(err)
		}
	}
	return in, file
}

func TestMicroVMs(t *testing.T) {
	in, file := setup(t)
	bin := testenv.Binaries(t)
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() }) // after the VMs have stopped
	if out, err := sandbox.Command(sb.Host, bin, "apply", "--host-only", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("apply: %s %v", out, err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}

	logs := t.TempDir()
	// All four boot together, as after a host reboot.
	vms, clients := sandboxtest.Boot(t, sb, in, bin, file, logs)

	t.Run("identity", func(t *testing.T) {
		for _, vm := range in.VMs {
			out := mustRun(t, clients[vm.Name], "hostname; ip -4 -br addr show eth0")
			if !strings.HasPrefix(out, vm.Name+"\n") || !strings.Contains(out, vm.Addr.String()+"/24") {
				t.Errorf("%s: got %q, want its own name and %s", vm.Name, out, vm.Addr)
			}
		}
	})

	t.Run("promises", func(t *testing.T) {
		sandboxtest.Promises(t, sb, in, check.NewGuestProber(clients, sandbox.Prober{S: sb}, guest.Run))
	})

	t.Run("image is read-only", func(t *testing.T) {
		out, code, err := guest.Run(clients["vm2"], "mount -o remount,rw / && touch /usr/microvm-probe")
		if err != nil || code == 0 || !strings.Contains(out, "Read-only file system") {
			t.Errorf("writing the image after remount rw: exit %d, %q, %v; want a read-only error", code, out, err)
		}
		if _, err := os.Stat(filepath.Join(in.Host.ImageRootfs("debian"), "usr/microvm-probe")); err == nil {
			t.Error("the guest wrote into the image")
		}
	})

	t.Run("var survives a restart", func(t *testing.T) {
		vm, _ := in.VM("vm1")
		token := hex.EncodeToString([]byte(time.Now().String()))[:16]
		mustRun(t, clients["vm1"], "echo "+token+" > /var/microvm-marker && sync")
		clients["vm1"].Close()

		stopped := time.Now()
		if err := vms["vm1"].Stop(60 * time.Second); err != nil {
			t.Fatalf("stopping vm1: %v", err)
		}
		delete(vms, "vm1")
		t.Logf("vm1 stopped in %s", time.Since(stopped).Round(100*time.Millisecond))
		console, _ := os.ReadFile(vm.ConsoleLog())
		if !bytes.Contains(console, []byte("systemd-shutdown")) {
			t.Errorf("no clean guest shutdown in the console:\n%s", supervise.Tail(console, 15))
		}
		// The supervisor returns only after its daemons: none may be left.
		if out, _ := exec.Command("pgrep", "-f", vm.RunDir+"/virtiofs-").Output(); len(out) > 0 {
			t.Errorf("virtiofsd still running after stop: pids %s", out)
		}

		v, err := sb.StartVM(bin, file, "vm1", filepath.Join(logs, "vm1-again.log"))
		if err != nil {
			t.Fatal(err)
		}
		vms["vm1"] = v
		c := sandboxtest.Login(t, sb, vm)
		clients["vm1"] = c
		if got := strings.TrimSpace(mustRun(t, c, "cat /var/microvm-marker")); got != token {
			t.Errorf("after restart /var/microvm-marker = %q, want %q", got, token)
		}
	})
}

func mustRun(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	out, code, err := guest.Run(c, cmd)
	if err != nil || code != 0 {
		t.Fatalf("%q: exit %d: %s %v", cmd, code, out, err)
	}
	return out
}
