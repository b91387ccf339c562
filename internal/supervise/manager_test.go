package supervise

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// On a host whose PID 1 is systemd, the manager installs the units once and
// drives systemctl; here systemctl is a script that records its calls.
func TestSystemdManager(t *testing.T) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >> "+calls+"\n[ \"$1\" = is-active ] && exit 3\nexit 0\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	oldUnit, oldBooted := UnitDir, bootedDir
	UnitDir, bootedDir = filepath.Join(dir, "units"), dir
	defer func() { UnitDir, bootedDir = oldUnit, oldBooted }()
	os.Mkdir(UnitDir, 0o755)

	file := filepath.Join(dir, "infra.toml")
	os.WriteFile(file, []byte("[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\nmemory = 1024\n"), 0o644)
	m, err := For("/usr/local/bin/microvm", file)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind() != KindSystemd {
		t.Fatalf("kind %s, want systemd", m.Kind())
	}
	vm := &config.VM{Name: "vm1"}
	if err := m.Start(vm); err != nil {
		t.Fatal(err)
	}
	if err := m.Enable(vm, true); err != nil {
		t.Fatal(err)
	}
	if m.Active(vm) {
		t.Error("active, but systemctl is-active said no")
	}
	if err := m.Stop(vm); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(calls)
	want := "daemon-reload\nenable microvms.target microvm-host.service\nstart microvm@vm1.service\nenable microvm@vm1.service\nis-active --quiet microvm@vm1.service\nstop microvm@vm1.service\n"
	if string(got) != want {
		t.Errorf("systemctl calls:\n%s\nwant:\n%s", got, want)
	}
	unit, err := os.ReadFile(filepath.Join(UnitDir, Template))
	if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/local/bin/microvm run -f "+file+" %i") {
		t.Errorf("installed unit: %v\n%s", err, unit)
	}
	// The VM's limits, in a drop-in of its unit, installed with it.
	limits, err := os.ReadFile(filepath.Join(UnitDir, "microvm@vm1.service.d", "limits.conf"))
	if err != nil || !strings.Contains(string(limits), "\nMemoryMax=1172M\n") {
		t.Errorf("installed limits: %v\n%s", err, limits)
	}
}
