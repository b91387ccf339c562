package config

import (
	"slices"
	"testing"
)

const fleetFile = `[host]
uplink = "eth0"
state_dir = "/var/lib/microvms"

[fleet.host.hv1]
address = "192.168.1.11"
memory = 4096

[fleet.host.hv2]
address = "hv2.example.net"
memory = 2048
uplink = "enp3s0"
state_dir = "/srv/microvms"

[vm.web]
subnet = "10.1.0.0/24"
host = "hv2"

[vm.db]
subnet = "10.2.0.0/24"
`

// TestFleetPart checks that a part is its host's model: the host's keys
// over [host], only its VMs, and the VMs' paths under its state_dir.
func TestFleetPart(t *testing.T) {
	whole, err := Parse("fleet.toml", []byte(fleetFile))
	if err != nil {
		t.Fatal(err)
	}
	if !whole.IsFleet() || len(whole.VMs) != 2 || len(whole.Fleet) != 2 {
		t.Fatalf("whole file: fleet %v, %d VMs, %d hosts; want a fleet of 2 hosts and 2 VMs", whole.IsFleet(), len(whole.VMs), len(whole.Fleet))
	}
	if web, _ := whole.VM("web"); web.Host != "hv2" {
		t.Errorf("web.Host = %q, want hv2", web.Host)
	}
	for _, tc := range []struct {
		host, uplink, stateDir string
		vms                    []string
	}{
		{"hv1", "eth0", "/var/lib/microvms", []string{"db"}},
		{"hv2", "enp3s0", "/srv/microvms", []string{"web"}},
		{"hv1", "eth0", "/var/lib/microvms", nil},
	} {
		in, err := Parse("part.toml", WithPart([]byte(fleetFile), Part{Host: tc.host, VMs: tc.vms, Revision: 7}))
		if err != nil {
			t.Fatalf("part of %s: %v", tc.host, err)
		}
		var got []string
		for _, vm := range in.VMs {
			got = append(got, vm.Name)
			if want := tc.stateDir + "/" + vm.Name; vm.StateDir != want {
				t.Errorf("%s: %s.StateDir = %q, want %q", tc.host, vm.Name, vm.StateDir, want)
			}
		}
		if !slices.Equal(got, tc.vms) || in.Host.Uplink != tc.uplink || in.Part.Host != tc.host || in.Part.Revision != 7 {
			t.Errorf("part of %s: VMs %v, uplink %q, part %+v; want VMs %v, uplink %q", tc.host, got, in.Host.Uplink, in.Part, tc.vms, tc.uplink)
		}
	}
}
