package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestBad checks every file in testdata/bad is rejected with exactly the
// messages in its .err file.
func TestBad(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.toml")
	if len(files) < 30 {
		t.Fatalf("got %d bad files, want at least 30", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		t.Run(name, func(t *testing.T) {
			src, _ := os.ReadFile(f)
			in, err := Parse(filepath.Base(f), src)
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", in.VMs)
			}
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("got error of type %T, want ErrorList", err)
			}
			testenv.Golden(t, "bad/"+name+".err", err.Error()+"\n")
		})
	}
}

// TestExample derives the model of the shipped example, the design's setup.
func TestExample(t *testing.T) {
	in, err := Load("../../examples/infra.toml")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Golden(t, "example.model", describe(in))
	for i, vm := range in.VMs {
		n := i + 1
		if got, want := vm.Subnet.String(), fmt.Sprintf("10.%d.0.0/24", n); got != want {
			t.Errorf("%s subnet = %s, want %s", vm.Name, got, want)
		}
		if got, want := vm.Gateway.String(), fmt.Sprintf("10.%d.0.1", n); got != want {
			t.Errorf("%s gateway = %s, want %s", vm.Name, got, want)
		}
		if got, want := vm.Addr.String(), fmt.Sprintf("10.%d.0.2", n); got != want {
			t.Errorf("%s address = %s, want %s", vm.Name, got, want)
		}
		if got, want := vm.Bridge, "br-"+vm.Name; got != want {
			t.Errorf("bridge = %s, want %s", got, want)
		}
		if got, want := vm.TAP, "vm-"+vm.Name; got != want {
			t.Errorf("tap = %s, want %s", got, want)
		}
		if vm.MAC[0] != 0x02 {
			t.Errorf("%s MAC %s is not locally administered unicast", vm.Name, vm.MAC)
		}
	}
}

func describe(in *Infra) string {
	var b strings.Builder
	fmt.Fprintf(&b, "host: %+v\n", in.Host)
	for _, vm := range in.VMs {
		fmt.Fprintf(&b, "%s: subnet=%s gateway=%s addr=%s subnet6=%s gateway6=%s addr6=%s linklocal6=%s bridge=%s tap=%s mac=%s vcpu=%d memory=%d hypervisor=%s image=%s dns=%s user=%s allow=%v egress=%v state=%s etc=%s var=%s run=%s vmm=%s\n",
			vm.Name, vm.Subnet, vm.Gateway, vm.Addr, vm.Subnet6, vm.Gateway6, vm.Addr6, vm.LinkLocal6, vm.Bridge, vm.TAP, vm.MAC, vm.VCPU, vm.MemoryMiB,
			vm.Hypervisor, vm.Image, vm.DNS, vm.User, vm.Allow, EgressNames(vm.Egress), vm.StateDir, vm.EtcDir, vm.VarDir, vm.RunDir, vm.VMMDir())
	}
	return b.String()
}

func TestDefaultsAndOverrides(t *testing.T) {
	in, err := Parse("x.toml", []byte(`
[host]
uplink = "enp1s0"
[defaults]
vcpu = 2
[vm.b]
subnet = "192.168.7.0/24"
memory = 2048
hypervisor = "qemu"
[vm.a]
subnet = "172.16.0.0/29"
`))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := in.VM("a")
	b, _ := in.VM("b")
	tests := []struct {
		name      string
		got, want any
	}{
		{"order", in.VMs[0].Name, "a"},
		{"state_dir default", in.Host.StateDir, DefaultStateDir},
		{"user default", in.Host.User, DefaultUser},
		{"a vcpu from defaults", a.VCPU, 2},
		{"a memory default", a.MemoryMiB, DefaultMemoryMiB},
		{"a hypervisor default", a.Hypervisor, DefaultHypervisor},
		{"a addr in /29", a.Addr.String(), "172.16.0.2"},
		{"b memory override", b.MemoryMiB, 2048},
		{"b hypervisor override", b.Hypervisor, QEMU},
		{"b dns default", b.DNS, DefaultDNS},
		{"pos of b.subnet", in.Pos("vm.b.subnet"), "x.toml:7:1"},
		{"pos of unknown key", in.Pos("vm.c"), "x.toml"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestMACStable(t *testing.T) {
	// A VM keeps its MAC when its subnet changes or other VMs come and go.
	one, err := Parse("1", []byte("[host]\nuplink=\"eth0\"\n[vm.web]\nsubnet=\"10.1.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	two, err := Parse("2", []byte("[host]\nuplink=\"eth0\"\n[vm.db]\nsubnet=\"10.1.0.0/24\"\n[vm.web]\nsubnet=\"10.9.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	w1, _ := one.VM("web")
	w2, _ := two.VM("web")
	if w1.MAC.String() != w2.MAC.String() {
		t.Errorf("MAC changed: %s then %s", w1.MAC, w2.MAC)
	}
}

// FuzzParse checks that no input makes the loader panic, and that whatever
// it accepts is a consistent model.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/bad/*.toml")
	files = append(files, "../../examples/infra.toml")
	for _, file := range files {
		src, _ := os.ReadFile(file)
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		in, err := Parse("fuzz.toml", src)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.toml:") {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		if len(in.VMs) == 0 || in.Host.Uplink == "" {
			t.Fatalf("accepted a model without VMs or uplink")
		}
		for i, a := range in.VMs {
			if len(a.Bridge) > 15 || len(a.TAP) > 15 {
				t.Fatalf("interface name too long: %s %s", a.Bridge, a.TAP)
			}
			if !a.Subnet.Contains(a.Gateway) || !a.Subnet.Contains(a.Addr) {
				t.Fatalf("%s: addresses outside subnet", a.Name)
			}
			if a.HasIPv6() && (!a.Subnet6.Contains(a.Gateway6) || !a.Subnet6.Contains(a.Addr6) || !in.Host.IPv6Prefix.Contains(a.Addr6)) {
				t.Fatalf("%s: IPv6 addresses outside its subnet %s or the prefix %s", a.Name, a.Subnet6, in.Host.IPv6Prefix)
			}
			for _, b := range in.VMs[:i] {
				if a.Subnet.Overlaps(b.Subnet) {
					t.Fatalf("accepted overlapping subnets %s %s", a.Subnet, b.Subnet)
				}
			}
		}
	})
}

// TestAllow reads allow lists, with where each entry is written.
func TestAllow(t *testing.T) {
	src := `[host]
uplink = "eth0"
allow = ["192.168.1.20", "192.168.1.0/24 icmp",
  "10.0.0.5 udp 53,123", "10.9.0.0/16 tcp 22,8000-8080"]

[vm.vm1]
subnet = "10.1.0.0/24"
allow = ["172.16.0.9 tcp 445"]

[vm.vm2]
subnet = "10.2.0.0/24"
`
	in, err := Parse("a.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range in.Host.Allow {
		got = append(got, a.String()+" @"+a.At)
	}
	vm1, _ := in.VM("vm1")
	vm2, _ := in.VM("vm2")
	for _, a := range vm1.Allow {
		got = append(got, "vm1: "+a.String()+" @"+a.At)
	}
	want := []string{
		"192.168.1.20 @a.toml:3:10",
		"192.168.1.0/24 icmp @a.toml:3:26",
		"10.0.0.5 udp 53,123 @a.toml:4:3",
		"10.9.0.0/16 tcp 22,8000-8080 @a.toml:4:26",
		"vm1: 172.16.0.9 tcp 445 @a.toml:8:10",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(vm2.Allow) != 0 || vm1.User != "microvm-vm1" || vm2.User != "microvm-vm2" {
		t.Errorf("vm2.Allow = %v, users %q %q", vm2.Allow, vm1.User, vm2.User)
	}
}
