package config

import (
	"testing"
)

func TestLimits(t *testing.T) {
	in, err := Parse("x.toml", []byte(`
[host]
uplink = "eth0"
accel = "tcg"
[defaults]
disk = "8G"
io_weight = 50
[vm.a]
subnet = "10.1.0.0/24"
[vm.b]
subnet = "10.2.0.0/24"
hypervisor = "qemu"
memory = 1024
vcpu = 2
disk = "1T"
cpu_max = "150%"
io_weight = 300
[vm.c]
subnet = "10.3.0.0/24"
disk = "1G"
[vm.c.volumes]
data = { size = "4G", mount = "/var/lib/data" }
logs = { size = "512M", mount = "/var/log/app" }
`))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := in.VM("a")
	b, _ := in.VM("b")
	c, _ := in.VM("c")
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"a disk from defaults", a.Limits.DiskBytes, int64(8 << 30)},
		{"a io_weight from defaults", a.Limits.IOWeight, 50},
		{"a no cpu_max", a.Limits.CPUMax, 0},
		{"a memory limit (cloud-hypervisor)", a.Limits.MemoryMiB, 512 + 128 + 10},
		{"a cpu weight", a.Limits.CPUWeight, 100},
		{"a pids", a.Limits.Pids, 512 + 16},
		{"b disk", b.Limits.DiskBytes, int64(1 << 40)},
		{"b cpu_max", b.Limits.CPUMax, 150},
		{"b io_weight", b.Limits.IOWeight, 300},
		{"b memory limit (qemu, tcg)", b.Limits.MemoryMiB, 1024 + 256 + 20},
		{"b cpu weight", b.Limits.CPUWeight, 200},
		{"b pids", b.Limits.Pids, 512 + 32},
		{"a disk quota", a.DiskQuota(), int64(8 << 30)},
		{"c disk quota: disk and volumes", c.DiskQuota(), int64(1<<30 + 4<<30 + 512<<20)},
		{"c disk", c.Limits.DiskBytes, int64(1 << 30)},
		{"project ids differ", a.ProjectID() != b.ProjectID(), true},
		{"project id range", a.ProjectID() >= 1<<30 && a.ProjectID() < 1<<31, true},
		{"cgroup name", a.CgroupName(), "microvm-a"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	def, err := Parse("y.toml", []byte("[host]\nuplink = \"eth0\"\n[vm.a]\nsubnet = \"10.1.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := def.VMs[0].Limits; got.DiskBytes != 20<<30 || got.IOWeight != 100 || got.CPUMax != 0 {
		t.Errorf("defaults: %+v", got)
	}
}

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"20G", 20 << 30, true},
		{"512M", 512 << 20, true},
		{"3T", 3 << 40, true},
		{"0M", 0, true},
		{"20", 0, false},
		{"20g", 0, false},
		{"20GB", 0, false},
		{"G", 0, false},
		{"+5G", 0, false},
		{"1.5G", 0, false},
		{"", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			if back, _ := ParseSize(FormatSize(got)); back != got {
				t.Errorf("FormatSize(%d) = %q reads back as %d", got, FormatSize(got), back)
			}
		}
	}
	if got := FormatSize(1536 << 20); got != "1536M" {
		t.Errorf("FormatSize(1536M) = %q", got)
	}
}
