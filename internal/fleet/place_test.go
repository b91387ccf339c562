package fleet

import (
	"maps"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

func fleetModel(t *testing.T, vms string) *config.Infra {
	t.Helper()
	src := `[host]
uplink = "eth0"
[fleet.host.hv1]
address = "10.0.0.1"
memory = 2048
[fleet.host.hv2]
address = "10.0.0.2"
memory = 1024
` + vms
	in, err := config.Parse("fleet.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// TestPlace: VMs stay where they run, pinned ones go to their host, the
// others to the host with the most free memory; too little memory, or a pin
// that contradicts where a VM runs, is refused.
func TestPlace(t *testing.T) {
	for _, tc := range []struct {
		name, vms    string
		current      map[string]string
		want         map[string]string
		placed       int
		removed, err string
	}{
		{name: "first push",
			vms:  "[vm.a]\nsubnet = \"10.1.0.0/24\"\nmemory = 512\n[vm.b]\nsubnet = \"10.2.0.0/24\"\nmemory = 1024\n[vm.c]\nsubnet = \"10.3.0.0/24\"\nmemory = 512\nhost = \"hv2\"\n",
			want: map[string]string{"a": "hv1", "b": "hv1", "c": "hv2"}, placed: 3},
		{name: "stays and fills the emptier host",
			vms:     "[vm.a]\nsubnet = \"10.1.0.0/24\"\nmemory = 512\n[vm.b]\nsubnet = \"10.2.0.0/24\"\nmemory = 512\n",
			current: map[string]string{"a": "hv1", "gone": "hv2"},
			want:    map[string]string{"a": "hv1", "b": "hv1"}, placed: 1, removed: "gone"},
		{name: "no room",
			vms: "[vm.a]\nsubnet = \"10.1.0.0/24\"\nmemory = 4096\n",
			err: "no host has 4096 MiB free for a"},
		{name: "pinned over its host's memory",
			vms: "[vm.a]\nsubnet = \"10.1.0.0/24\"\nmemory = 2048\nhost = \"hv2\"\n",
			err: "the VMs on hv2 take 2048 MiB of memory, more than its memory = 1024"},
		{name: "pin contradicts where it runs",
			vms:     "[vm.a]\nsubnet = \"10.1.0.0/24\"\nhost = \"hv1\"\n",
			current: map[string]string{"a": "hv2"},
			err:     `vm.a.host = "hv1", but a runs on hv2`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := fleetModel(t, tc.vms)
			all, placed, removed, err := Place(in, tc.current, nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(all, tc.want) || len(placed) != tc.placed || strings.Join(removed, ",") != tc.removed {
				t.Errorf("got %v, %d placed, removed %v; want %v, %d placed, removed %q", all, len(placed), removed, tc.want, tc.placed, tc.removed)
			}
		})
	}
}
