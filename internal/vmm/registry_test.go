package vmm_test

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	_ "github.com/simple-microvm-infra/microvm/internal/vmm/cloudhypervisor"
	_ "github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// The hypervisors config accepts are those the registry has a backend
// for, with the control socket config derives.
func TestRegistryMatchesConfig(t *testing.T) {
	got, want := vmm.Names(), slices.Sorted(slices.Values(config.Hypervisors))
	if !slices.Equal(got, want) {
		t.Fatalf("vmm registers %q, config accepts %q: register the backend, or add the name and control socket to config's controlSockets", got, want)
	}
	if _, ok := vmm.Lookup(config.DefaultHypervisor); !ok {
		t.Errorf("the default hypervisor %q is not registered", config.DefaultHypervisor)
	}
	for _, name := range got {
		h, _ := vmm.Lookup(name)
		vm := &config.VM{Name: "vm1", Hypervisor: name, RunDir: "/run/microvm/vm1"}
		if sock := filepath.Base(vm.ControlSocket()); sock != h.Socket {
			t.Errorf("%s: config's control socket is %s, the backend's %s", name, sock, h.Socket)
		}
		if h.Name != name || h.Title == "" || h.Program == "" || h.New == nil {
			t.Errorf("%s: incomplete entry %+v", name, h)
		}
		if h.New("kvm") == nil {
			t.Errorf("%s: New returned no backend", name)
		}
	}
}

// A hypervisor without virtiofs cannot run a VM, and says so at the
// VM's hypervisor key, as a problem in the file.
func TestForWithoutVirtiofs(t *testing.T) {
	vmm.Register(vmm.Hypervisor{Name: "noshare", Title: "No Share", Program: "true"})
	defer vmm.Unregister("noshare")
	in, err := config.Parse("infra.toml", []byte("[host]\nuplink = \"eth0\"\n\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\nhypervisor = \"qemu\"\n\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := vmm.Check(in); err != nil {
		t.Fatalf("with registered hypervisors: %v", err)
	}
	in.VMs[0].Hypervisor = "noshare"
	in.VMs[1].Hypervisor = "firecracker"
	err = vmm.Check(in)
	var list config.ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("got %v, want two problems in the file", err)
	}
	for i, want := range []string{
		`infra.toml:6:1: vm.vm1: hypervisor "noshare" cannot give the guest virtiofs shares, which every VM boots from; use one of ["cloud-hypervisor" "qemu"]`,
		`infra.toml:8:5: vm.vm2: hypervisor "firecracker" has no backend in this program; use one of ["cloud-hypervisor" "noshare" "qemu"]`,
	} {
		if got := list[i].Error(); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
	if _, err := vmm.For(in, &in.VMs[0]); err == nil || !strings.Contains(err.Error(), "virtiofs") {
		t.Errorf("For: got %v", err)
	}
}
