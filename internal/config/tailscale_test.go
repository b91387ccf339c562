package config

import "testing"

// TestTailscaleTable reads [host.tailscale] written each way TOML allows,
// with its defaults. (Rejected forms are in testdata/bad/tailscale-*.)
func TestTailscaleTable(t *testing.T) {
	const vms = "\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n"
	tests := []struct {
		name string
		host string // the [host] table and what follows it, before the VMs
		want TailscaleSettings
	}{
		{"absent", "[host]\nuplink = \"eth0\"\n",
			TailscaleSettings{Enabled: TailscaleAuto, Socket: DefaultTailscaleSocket}},
		{"table", "[host]\nuplink = \"eth0\"\n[host.tailscale]\nenabled = true\nsocket = \"/run/ts/s.sock\"\nallow_vm_to_tailnet = true\n",
			TailscaleSettings{Enabled: TailscaleOn, Socket: "/run/ts/s.sock", AllowVMToTailnet: true}},
		{"auto spelled out", "[host]\nuplink = \"eth0\"\n[host.tailscale]\nenabled = \"auto\"\n",
			TailscaleSettings{Enabled: TailscaleAuto, Socket: DefaultTailscaleSocket}},
		{"off", "[host]\nuplink = \"eth0\"\n[host.tailscale]\nenabled = false\n",
			TailscaleSettings{Enabled: TailscaleOff, Socket: DefaultTailscaleSocket}},
		{"inline table", "[host]\nuplink = \"eth0\"\ntailscale = { enabled = false, allow_vm_to_tailnet = true }\n",
			TailscaleSettings{Enabled: TailscaleOff, Socket: DefaultTailscaleSocket, AllowVMToTailnet: true}},
		{"dotted keys", "[host]\nuplink = \"eth0\"\ntailscale.socket = \"/tmp/t.sock\"\n",
			TailscaleSettings{Enabled: TailscaleAuto, Socket: "/tmp/t.sock"}},
		{"table before host", "[host.tailscale]\nenabled = true\n[host]\nuplink = \"eth0\"\n",
			TailscaleSettings{Enabled: TailscaleOn, Socket: DefaultTailscaleSocket}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := Parse("x.toml", []byte(tt.host+vms))
			if err != nil {
				t.Fatal(err)
			}
			if got := in.Host.Tailscale; got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
