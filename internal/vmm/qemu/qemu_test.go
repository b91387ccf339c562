package qemu

import (
	"os"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

const infra = `
[host]
uplink = "eth0"
state_dir = "/var/lib/microvms"
run_dir = "/run/microvm"
user = "microvm"

[defaults]
hypervisor = "qemu"

[vm.vm1]
subnet = "10.1.0.0/24"

[vm.vm2]
subnet = "10.2.0.0/24"
vcpu = 2
memory = 2048
dns = "9.9.9.9"
`

func parse(t *testing.T) *config.Infra {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte(infra))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestCommand proves the command lines built from the model against golden
// files: under KVM and under TCG, with one vCPU and with a multi-queue TAP,
// with and without vhost-net. Each option was checked against QEMU 7.2, and
// the tcg one boots a guest (cmd/microvm-init's boot test).
func TestCommand(t *testing.T) {
	in := parse(t)
	tests := []struct {
		golden string
		vm     string
		b      *Backend
	}{
		{"vm1-kvm.golden", "vm1", &Backend{Accel: "kvm", TBSizeMiB: 128}},
		{"vm2-kvm-vhost.golden", "vm2", &Backend{Accel: "kvm", VhostNet: true}},
		{"vm1-tcg.golden", "vm1", &Backend{Accel: "tcg", TSCkHz: 2596094, TSCReliable: true, TBSizeMiB: 128}},
		{"vm2-tcg-no-tsc.golden", "vm2", &Backend{Accel: "tcg"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			vm, _ := in.VM(tt.vm)
			spec := vmm.NewSpec(in.Host, vm, vm.Image)
			spec.Console = os.Stderr // any descriptor: the console pipe's, given as fd 3
			cmd, err := tt.b.Command(spec)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, tt.golden, testenv.Shell(cmd.Args))
		})
	}
}

func TestCommandErrors(t *testing.T) {
	in := parse(t)
	vm, _ := in.VM("vm1")
	spec := vmm.NewSpec(in.Host, vm, vm.Image)
	tests := []struct {
		name string
		b    *Backend
		want string
	}{
		{"no accelerator", &Backend{}, "not kvm or tcg"},
		{"hvf", &Backend{Accel: "hvf"}, "not kvm or tcg"},
		{"vhost under tcg", &Backend{Accel: "tcg", VhostNet: true}, "vhost-net needs"},
	}
	for _, tt := range tests {
		if _, err := tt.b.Command(spec); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestCPUInfoTSC(t *testing.T) {
	tests := []struct {
		name, cpuinfo string
		want          int
	}{
		{"amd vm", "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.094\nflags\t\t: fpu tsc\n", 2596094},
		{"two cpus", "cpu MHz\t\t: 3000.000\n\ncpu MHz\t\t: 1200.000\n", 3000000},
		{"arm, no cpu MHz", "processor\t: 0\nBogoMIPS\t: 50.00\n", 0},
		{"garbage", "cpu MHz\t\t: fast\n", 0},
	}
	for _, tt := range tests {
		if got := cpuinfoTSCkHz(strings.NewReader(tt.cpuinfo)); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
}
