package main

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/examples"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// seed is the command line of the design's first VM, as vmm.Cmdline writes
// it, followed by what QEMU appends for its MMIO devices and what
// /proc/cmdline ends with.
const seed = "console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=vm1 microvm.ip=10.1.0.2/24 microvm.gw=10.1.0.1 microvm.dns=1.1.1.1" +
	" virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11\n"

func TestParseCmdline(t *testing.T) {
	vm1 := Config{
		Name:    "vm1",
		Addr:    netip.MustParsePrefix("10.1.0.2/24"),
		Gateway: netip.MustParseAddr("10.1.0.1"),
		DNS:     netip.MustParseAddr("1.1.1.1"),
		Init:    "/sbin/init",
	}
	withInit := vm1
	withInit.Init = "/bin/test-init"
	writable := vm1
	writable.ImageRW = true
	withVolumes := vm1
	withVolumes.Volumes = []volume{{"data", "/var/lib/redis"}, {"logs", "/srv/logs"}}

	// replace returns seed with the word of key replaced by word ("" drops it).
	replace := func(key, word string) string {
		var out []string
		for _, w := range strings.Fields(seed) {
			if strings.HasPrefix(w, key+"=") {
				w = word
			}
			if w != "" {
				out = append(out, w)
			}
		}
		return strings.Join(out, " ")
	}

	for _, tc := range []struct {
		name    string
		line    string
		want    Config
		wantErr string // a part of the error; "" for none
	}{
		{name: "seed", line: seed, want: vm1},
		{name: "words in any order", line: "microvm.dns=1.1.1.1 microvm.gw=10.1.0.1 microvm.ip=10.1.0.2/24 microvm.name=vm1", want: vm1},
		{name: "init override", line: seed + " microvm.init=/bin/test-init", want: withInit},
		{name: "writable image", line: seed + " microvm.image=rw", want: writable},
		{name: "volumes", line: seed + " microvm.volume=data:/var/lib/redis microvm.volume=logs:/srv/logs", want: withVolumes},
		{name: "volume without a directory", line: seed + " microvm.volume=data", wantErr: `microvm.volume="data" is not NAME:/DIR`},
		{name: "image mode", line: seed + " microvm.image=ro", wantErr: `microvm.image="ro" is not rw, the one value it takes`},
		{name: "unknown words ignored", want: vm1,
			line: "BOOT_IMAGE=/vmlinuz quiet ro root= microvm.unknown=1 microvm.unknown=2 microvm.ipx=x microvm " + seed},
		{name: "tabs and newlines", line: strings.ReplaceAll(seed, " ", "\t\n "), want: vm1},
		{name: "other subnet", want: Config{Name: "db", Addr: netip.MustParsePrefix("192.168.7.130/25"),
			Gateway: netip.MustParseAddr("192.168.7.129"), DNS: netip.MustParseAddr("9.9.9.9"), Init: "/sbin/init"},
			line: "microvm.name=db microvm.ip=192.168.7.130/25 microvm.gw=192.168.7.129 microvm.dns=9.9.9.9"},

		{name: "empty", line: "", wantErr: "missing microvm.name, microvm.ip, microvm.gw, microvm.dns"},
		{name: "missing name", line: replace("microvm.name", ""), wantErr: "missing microvm.name"},
		{name: "missing ip", line: replace("microvm.ip", ""), wantErr: "missing microvm.ip"},
		{name: "missing gw", line: replace("microvm.gw", ""), wantErr: "missing microvm.gw"},
		{name: "missing dns", line: replace("microvm.dns", ""), wantErr: "missing microvm.dns"},
		{name: "key without value", line: replace("microvm.ip", "microvm.ip"), wantErr: `microvm.ip="" is not an IPv4 address`},

		{name: "duplicate", line: seed + " microvm.ip=10.1.0.3/24", wantErr: "microvm.ip is given twice"},
		{name: "duplicate, same value", line: seed + " microvm.name=vm1", wantErr: "microvm.name is given twice"},
		{name: "duplicate init", line: seed + " microvm.init=/a microvm.init=/b", wantErr: "microvm.init is given twice"},

		{name: "no prefix length", line: replace("microvm.ip", "microvm.ip=10.1.0.2"), wantErr: `microvm.ip="10.1.0.2" is not`},
		{name: "bad address", line: replace("microvm.ip", "microvm.ip=10.1.0.300/24"), wantErr: `microvm.ip="10.1.0.300/24" is not`},
		{name: "prefix too long", line: replace("microvm.ip", "microvm.ip=10.1.0.2/32"), wantErr: `microvm.ip="10.1.0.2/32" is not`},
		{name: "IPv6 address", line: replace("microvm.ip", "microvm.ip=fd00::2/64"), wantErr: `microvm.ip="fd00::2/64" is not`},
		{name: "bad gateway", line: replace("microvm.gw", "microvm.gw=gateway"), wantErr: `microvm.gw="gateway" is not an IPv4 address`},
		{name: "gateway outside subnet", line: replace("microvm.gw", "microvm.gw=10.2.0.1"), wantErr: "microvm.gw=10.2.0.1 is not in the subnet of microvm.ip=10.1.0.2/24"},
		{name: "gateway is own address", line: replace("microvm.gw", "microvm.gw=10.1.0.2"), wantErr: "microvm.gw=10.1.0.2 is the VM's own address"},
		{name: "bad dns", line: replace("microvm.dns", "microvm.dns=one.one"), wantErr: `microvm.dns="one.one" is not an IPv4 address`},
		{name: "IPv6 dns", line: replace("microvm.dns", "microvm.dns=2606:4700::1111"), wantErr: `microvm.dns="2606:4700::1111" is not an IPv4 address`},
		{name: "empty name", line: replace("microvm.name", "microvm.name="), wantErr: `microvm.name="" is not a hostname`},
		{name: "name too long", line: replace("microvm.name", "microvm.name="+strings.Repeat("a", 65)), wantErr: "is not a hostname (1 to 64 characters)"},
		{name: "relative init", line: seed + " microvm.init=sbin/init", wantErr: `microvm.init="sbin/init" is not an absolute path`},
		{name: "every problem at once", line: "microvm.name=vm1 microvm.name=vm2 microvm.ip=10.1.0.2 microvm.dns=x",
			wantErr: `microvm.name is given twice; missing microvm.gw; microvm.ip="10.1.0.2" is not an IPv4 address with a prefix length of 1 to 31 (10.1.0.2/24); microvm.dns="x" is not an IPv4 address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCmdline(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseCmdline(%q) = %+v, %v; want an error with %q", tc.line, got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q has several lines; the console gets one", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseCmdline(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
			}
		})
	}
}

// TestParseCmdlineOfModel proves that what the host writes (vmm.Cmdline, for
// every VM of the example infra.toml) is what the init reads.
func TestParseCmdlineOfModel(t *testing.T) {
	in, err := config.Parse("infra.toml", examples.InfraTOML)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		line := vmm.Cmdline(vm)
		c, err := parseCmdline(line)
		if err != nil {
			t.Errorf("%s: parseCmdline(%q): %v", vm.Name, line, err)
			continue
		}
		want := Config{Name: vm.Name, Addr: netip.PrefixFrom(vm.Addr, vm.Subnet.Bits()), Gateway: vm.Gateway,
			DNS: netip.MustParseAddr(vm.DNS), Init: defaultInit}
		if !reflect.DeepEqual(c, want) {
			t.Errorf("%s: parseCmdline(%q) = %+v, want %+v", vm.Name, line, c, want)
		}
	}
}
