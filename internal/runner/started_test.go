package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

func load(t *testing.T, extra string) (*config.Infra, *config.VM) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	src := "[host]\nuplink = \"eth0\"\nstate_dir = \"" + dir + "/state\"\nrun_dir = \"" + dir + "/run\"\n" + extra + "\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("vm1")
	return in, vm
}

// Each missing piece gives one clear message before anything is touched.
func TestPreflight(t *testing.T) {
	t.Run("missing VMM program", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		in, vm := load(t, "accel = \"tcg\"\n[defaults]\nhypervisor = \"qemu\"")
		err := Preflight(in, vm)
		if err == nil || !strings.Contains(err.Error(), "qemu-system-x86_64 is not installed") {
			t.Errorf("got %v", err)
		}
		in, vm = load(t, "")
		err = Preflight(in, vm)
		if err == nil || !strings.Contains(err.Error(), "cloud-hypervisor is not installed") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("missing /dev/kvm", func(t *testing.T) {
		bin := t.TempDir()
		os.WriteFile(filepath.Join(bin, "qemu-system-x86_64"), []byte("#!/bin/sh\n"), 0o755)
		t.Setenv("PATH", bin)
		old := KVMDevice
		KVMDevice = filepath.Join(t.TempDir(), "kvm")
		defer func() { KVMDevice = old }()
		in, vm := load(t, "accel = \"kvm\"\n[defaults]\nhypervisor = \"qemu\"")
		err := Preflight(in, vm)
		if err == nil || !strings.Contains(err.Error(), "needs /dev/kvm") || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("got %v", err)
		}
	})
}

func TestChanged(t *testing.T) {
	in, vm := load(t, "")
	was := Settings(in, vm)
	vm.MemoryMiB = 2048
	now := Settings(in, vm)
	if Hash(was) == Hash(now) {
		t.Fatal("same hash for different memory")
	}
	got := strings.Join(Changed(was, now), "; ")
	if got != "memory "+was["memory"]+" -> 2048" {
		t.Errorf("Changed = %q", got)
	}
	if c := Changed(now, Settings(in, vm)); len(c) != 0 {
		t.Errorf("unchanged settings differ: %v", c)
	}
}
