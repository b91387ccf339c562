package cli

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// runCommand runs c alone, as microvm would run it, with stdin and
// stdout; it returns its error and what it wrote to stderr.
func runCommand(c *command, stdin io.Reader, stdout io.Writer, args ...string) error {
	var stderr bytes.Buffer
	cc := c.cobra(stdin, stdout, &stderr)
	cc.SetArgs(args)
	cc.SetOut(stdout)
	cc.SetErr(&stderr)
	cc.SilenceErrors, cc.SilenceUsage = true, true
	return cc.Execute()
}

// moveHost writes the infra.toml of a host on pool, with the VM vm, and
// makes its datasets as apply does.
func moveHost(t *testing.T, pool *zfstest.Pool, vm string) (file string, in *config.Infra) {
	t.Helper()
	file = filepath.Join(pool.Dir, "infra.toml")
	body := "[host]\nuplink = \"eth0\"\nstate_dir = \"" + filepath.Join(pool.Dir, "state") + "\"\nrun_dir = \"" + filepath.Join(pool.Dir, "run") +
		"\"\nstorage = \"zfs\"\nzfs_dataset = \"" + pool.Name + "/microvms\"\n\n[vm." + vm + "]\nsubnet = \"10.1.0.0/24\"\n"
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	d, err := storage.For(in.Host).Diff(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.Setup {
		if err := a.Apply(); err != nil {
			t.Fatal(err)
		}
	}
	return file, in
}

// TestFleetSendReceive: fleet send on one host and fleet receive on
// another, which does not have the VM in its file, move vm1's data whole
// and then its changes; receive --list shows what the next move builds
// on; a receive while the VM runs on the target is refused.
func TestFleetSendReceive(t *testing.T) {
	pools := zfstest.Pools(t, 2)
	fileA, a := moveHost(t, pools[0], "vm1")
	fileB, b := moveHost(t, pools[1], "other")
	vmA, vmB := a.Host.Departed("vm1"), b.Host.Departed("vm1")
	motd := func(vm *config.VM) string {
		body, _ := os.ReadFile(filepath.Join(vm.VarDir, "motd"))
		return string(body)
	}
	if err := os.MkdirAll(vmA.VarDir, 0o755); err != nil {
		t.Fatal(err)
	}
	send := func(args ...string) *bytes.Buffer {
		t.Helper()
		var stream bytes.Buffer
		if err := runCommand(fleetSendCmd(), nil, &stream, append([]string{"-f", fileA, "vm1"}, args...)...); err != nil {
			t.Fatalf("fleet send %q: %v", args, err)
		}
		return &stream
	}
	receive := func(stream io.Reader, args ...string) (string, error) {
		var out bytes.Buffer
		err := runCommand(fleetReceiveCmd(), stream, &out, append([]string{"-f", fileB, "vm1"}, args...)...)
		return out.String(), err
	}

	for i, step := range []struct{ snap, base, motd string }{
		{"move-1", "", "first"},
		{"move-2", "move-1", "second"},
	} {
		if err := os.WriteFile(filepath.Join(vmA.VarDir, "motd"), []byte(step.motd), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"--snapshot", step.snap}
		if step.base != "" {
			args = append(args, "--base", step.base)
		}
		out, err := receive(send(args...))
		if err != nil {
			t.Fatalf("step %d: fleet receive: %v", i, err)
		}
		if want := "received vm1 into " + pools[1].Name + "/microvms/vm1"; !strings.Contains(out, want) {
			t.Errorf("step %d: fleet receive said %q, want %q", i, out, want)
		}
		if got := motd(vmB); got != step.motd {
			t.Errorf("step %d: motd on the target: got %q, want %q", i, got, step.motd)
		}
		if out, err := receive(nil, "--list"); err != nil || out != step.snap+"\n" {
			t.Errorf("step %d: receive --list: got %q, %v; want %q", i, out, err, step.snap+"\n")
		}
	}

	// vm1 runs on the target: its supervisor is there (a keeper's pid
	// file naming a live process, or a unit under systemd).
	if supervise.Booted() {
		unit := supervise.Unit("vm1")
		if out, err := exec.Command("systemd-run", "--unit", unit, "sleep", "600").CombinedOutput(); err != nil {
			t.Fatalf("systemd-run: %s: %v", out, err)
		}
		t.Cleanup(func() { exec.Command("systemctl", "stop", unit).Run() })
	} else {
		d, err := supervise.OpenRunDir(vmB)
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		if err := os.WriteFile(vmB.KeeperPidFile(), []byte(proc.Self().Format()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(vmA.VarDir, "motd"), []byte("third"), 0o644)
	if _, err := receive(send("--snapshot", "move-3", "--base", "move-2")); err == nil || !strings.Contains(err.Error(), "runs on this host") {
		t.Errorf("receive while vm1 runs on the target: got %v, want a refusal", err)
	}
	if got := motd(vmB); got != "second" {
		t.Errorf("motd after the refused receive: got %q, want %q", got, "second")
	}
}

// TestFleetSendReceiveUsage: mistakes are explained before anything is
// touched.
func TestFleetSendReceiveUsage(t *testing.T) {
	file := snapshotFile(t, t.TempDir(), "")
	tests := []struct {
		cmd  *command
		args []string
		want string
	}{
		{fleetSendCmd(), []string{"-f", file, "vm1"}, "--snapshot move-LABEL is required"},
		{fleetSendCmd(), []string{"-f", file, "--snapshot", "move-1"}, "name one VM"},
		{fleetSendCmd(), []string{"-f", file, "vm9", "--snapshot", "move-1"}, `no VM "vm9" in ` + file},
		{fleetSendCmd(), []string{"-f", file, "vm1", "--snapshot", "move-1"}, `moving a VM needs storage = "zfs" on both hosts`},
		{fleetReceiveCmd(), []string{"-f", file}, "name one VM"},
		{fleetReceiveCmd(), []string{"-f", file, "../x"}, `"../x" is not a VM name`},
		{fleetReceiveCmd(), []string{"-f", file, "vm9"}, `moving a VM needs storage = "zfs" on both hosts`},
		{fleetReceiveCmd(), []string{"-f", file, "vm9", "--list"}, `moving a VM needs storage = "zfs" on both hosts`},
	}
	for _, tt := range tests {
		t.Run(tt.cmd.name+" "+strings.Join(tt.args[2:], " "), func(t *testing.T) {
			err := runCommand(tt.cmd, strings.NewReader(""), io.Discard, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
}
