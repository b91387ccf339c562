package supervise

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// vms are two VMs with their limits, one with cpu_max.
func vms(t *testing.T) []config.VM {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte("[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\nvcpu = 2\nmemory = 1024\ncpu_max = \"150%\"\nio_weight = 50\n"))
	if err != nil {
		t.Fatal(err)
	}
	return in.VMs
}

func TestRenderGolden(t *testing.T) {
	u, err := Render("/usr/local/bin/microvm", "/etc/microvm/infra.toml", vms(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{Template, Target, HostUnit, "microvm@vm1.service.d/limits.conf", "microvm@vm2.service.d/limits.conf"} {
		golden := filepath.Join("testdata", strings.ReplaceAll(name, "/", "-"))
		if testenv.Update() {
			os.WriteFile(golden, u[name], 0o644)
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if string(want) != string(u[name]) {
			t.Errorf("%s differs from %s (go test -update):\n%s", name, golden, u[name])
		}
	}
}

func TestRenderRejects(t *testing.T) {
	for _, c := range [][2]string{{"microvm", "/etc/infra.toml"}, {"/bin/microvm", "infra.toml"}, {"/usr/local/bin/micro vm", "/etc/infra.toml"}, {"/bin/microvm", "/etc/100%.toml"}} {
		if _, err := Render(c[0], c[1], nil); err == nil {
			t.Errorf("Render(%q, %q) accepted", c[0], c[1])
		}
	}
}

// systemd-analyze verify reads the units as systemd would at boot, without
// a running systemd: unknown keys, bad values, a missing ExecStart program.
func TestVerify(t *testing.T) {
	testenv.NeedCommands(t, "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(dir, "microvm")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	file := filepath.Join(dir, "infra.toml")
	os.WriteFile(file, nil, 0o644)
	u, err := Render(bin, file, vms(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Install(dir); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "microvm@vm1.service"), filepath.Join(dir, "microvm@vm2.service"), filepath.Join(dir, Target), filepath.Join(dir, HostUnit))
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	out, err := cmd.CombinedOutput()
	// Without systemd as PID 1 it may note that it cannot reach the
	// system manager; what matters is anything about our files.
	var problems []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, dir) || strings.Contains(line, "microvm") {
			problems = append(problems, line)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify:\n%s", strings.Join(problems, "\n"))
	}
	t.Logf("systemd-analyze verify: %v\n%s", err, out)
	if changed, err := u.Install(dir); err != nil || changed {
		t.Errorf("installing the same units again: changed %v, %v", changed, err)
	}
}

// TestInstallLeavesForeignUnits: a unit file of one of the program's names
// that it did not write is an error, and stays as it was.
func TestInstallLeavesForeignUnits(t *testing.T) {
	dir := t.TempDir()
	u, err := Render("/usr/local/bin/microvm", "/etc/microvm/infra.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dir, HostUnit)
	os.WriteFile(mine, []byte("[Service]\nExecStart=/usr/bin/mine\n"), 0o644)
	if _, err := u.Changed(dir); err == nil || !strings.Contains(err.Error(), "was not written by microvm") {
		t.Errorf("Changed: %v; want an error naming %s", err, mine)
	}
	if changed, err := u.Install(dir); err == nil || changed {
		t.Errorf("Install: changed %v, %v; want an error", changed, err)
	}
	if b, _ := os.ReadFile(mine); string(b) != "[Service]\nExecStart=/usr/bin/mine\n" {
		t.Errorf("the foreign unit was changed: %q", b)
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("Install wrote %d files beside the foreign unit; want none", len(names)-1)
	}
}
