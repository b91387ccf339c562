package vmm_test

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/jail"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/cloudhypervisor"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

const twoVMs = `
[host]
uplink = "eth0"
state_dir = "/var/lib/microvms"
run_dir = "/run/microvm"

[vm.vm1]
subnet = "10.1.0.0/24"
vcpu = 2

[vm.vm2]
subnet = "10.2.0.0/24"
`

// TestJailHoldsTheCommandLine: every path a backend's command line names
// is in the VMM's jail (bound, or inside a bound directory), for both
// backends and both accelerators, and nothing else of the VM's or of
// another VM's is: not its state, not root's records, not vm2's files.
func TestJailHoldsTheCommandLine(t *testing.T) {
	in, err := config.Parse("infra.toml", []byte(twoVMs))
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("vm1")
	other, _ := in.VM("vm2")
	spec := vmm.NewSpec(in.Host, vm, "debian.1")
	backends := []struct {
		name  string
		b     vmm.Backend
		accel config.Accel
	}{
		{"qemu tcg", &qemu.Backend{Binary: "/usr/bin/qemu-system-x86_64", Accel: config.TCG}, config.TCG},
		{"qemu kvm", &qemu.Backend{Binary: "/usr/bin/qemu-system-x86_64", Accel: config.KVM}, config.KVM},
		{"cloud-hypervisor", &cloudhypervisor.Backend{Binary: "/usr/bin/cloud-hypervisor"}, config.KVM},
	}
	for _, tt := range backends {
		t.Run(tt.name, func(t *testing.T) {
			cmd, err := tt.b.Command(spec)
			if err != nil {
				t.Fatal(err)
			}
			j := spec.Jail(cmd.Path, tt.accel)
			if j.Root != "/run/microvm/vm1/jail" {
				t.Errorf("root %s, want /run/microvm/vm1/jail", j.Root)
			}
			for _, p := range paths(cmd.Args) {
				if !covered(j, p) {
					t.Errorf("%s names %s, which its jail does not hold", tt.name, p)
				}
			}
			if got := slices.Contains(j.Devices, "/dev/kvm"); got != (tt.accel == config.KVM) {
				t.Errorf("/dev/kvm in the jail: %v, under %s", got, tt.accel)
			}
			for _, p := range []string{vm.StateDir, vm.EtcDir, vm.VarDir, vm.StartedFile(), vm.SupervisorLog(),
				vm.RunLock(), in.Host.AdminKey(), other.RunDir, other.VMMDir(), other.ShareSocket("etc"),
				other.StateDir, "/etc", "/home", "/root", "/var", "/run", "/dev/net/tun"} {
				if covered(j, p) {
					t.Errorf("the jail holds %s", p)
				}
			}
			// Wrapped, the command is the same VMM command after "--",
			// and the jail's user is set by the caller.
			before := slices.Clone(cmd.Args[1:])
			j.UID, j.GID = 990, 990
			if err := j.Wrap(cmd); err != nil {
				t.Fatal(err)
			}
			i := slices.Index(cmd.Args, "--")
			if cmd.Args[0] != jail.Arg0 || i < 0 || !slices.Equal(cmd.Args[i+2:], before) {
				t.Errorf("wrapped: %q", cmd.Args)
			}
		})
	}
}

// paths are the absolute paths in a command line's arguments, as VMM
// options carry them: "path", "key=path", "a=b,key=path", "unix:path".
func paths(args []string) []string {
	var out []string
	for _, a := range args {
		for _, f := range strings.Split(a, ",") {
			if _, v, ok := strings.Cut(f, "="); ok {
				f = v
			}
			f = strings.TrimPrefix(f, "unix:")
			if strings.HasPrefix(f, "/") {
				out = append(out, f)
			}
		}
	}
	return out
}

// covered reports whether p is in j: bound itself, or beneath a bound
// directory.
func covered(j jail.Jail, p string) bool {
	for _, b := range slices.Concat(j.ReadOnly, j.Writable, j.Devices) {
		if p == b || strings.HasPrefix(p, b+"/") {
			return true
		}
	}
	return false
}

// TestJailProgram: the VMM's own program and libraries are there, wherever
// its path leads.
func TestJailProgram(t *testing.T) {
	in, err := config.Parse("infra.toml", []byte(twoVMs))
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("vm1")
	spec := vmm.NewSpec(in.Host, vm, "debian")
	path, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err) // the tests need QEMU (.ci/test-deps)
	}
	j := spec.Jail(path, config.TCG)
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, real} {
		if !covered(j, p) {
			t.Errorf("the program %s is not in the jail (%q)", p, j.ReadOnly)
		}
	}
}
