package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestReference checks the README's infra.toml reference against the
// code: every key the parser knows is in it, nothing else is, and each
// default is the value the model has when the file leaves the key out.
func TestReference(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "\n## infra.toml reference")
	if start < 0 {
		t.Fatal("README has no section \"## infra.toml reference\"")
	}
	doc = doc[start+1:]
	if end := strings.Index(doc[1:], "\n## "); end >= 0 {
		doc = doc[:end+1]
	}
	got := map[string]string{} // "[table] key" -> default, as written
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`[") {
			continue
		}
		got[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.Trim(strings.TrimSpace(cells[2]), "`")
	}

	in, err := Parse("min.toml", []byte("[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[image.x]\n"))
	if err != nil {
		t.Fatal(err)
	}
	h, vm := in.Host, in.VMs[0]
	defaults := map[string]string{
		"[host] uplink": "required", "[vm.NAME] subnet": "required",
		"[host] state_dir": fmt.Sprintf("%q", h.StateDir), "[host] run_dir": fmt.Sprintf("%q", h.RunDir),
		"[host] user": fmt.Sprintf("%q", h.User), "[host] accel": fmt.Sprintf("%q", h.Accel),
		"[host] storage": fmt.Sprintf("%q", h.Storage), "[host] zfs_dataset": fmt.Sprintf("%q", h.ZFSDataset),
		"[host] keep_snapshots":                fmt.Sprint(h.KeepSnapshots),
		"[host.tailscale] enabled":             fmt.Sprintf("%q", string(h.Tailscale.Enabled)),
		"[host.tailscale] socket":              fmt.Sprintf("%q", h.Tailscale.Socket),
		"[host.tailscale] allow_vm_to_tailnet": fmt.Sprint(h.Tailscale.AllowVMToTailnet),
		"[host.metrics] listen":                metricsDefault(h.Metrics.Listen),
		"[defaults] vcpu":                      fmt.Sprint(vm.VCPU), "[defaults] memory": fmt.Sprint(vm.MemoryMiB),
		"[defaults] hypervisor": fmt.Sprintf("%q", vm.Hypervisor), "[defaults] image": fmt.Sprintf("%q", vm.Image),
		"[defaults] dns": fmt.Sprintf("%q", vm.DNS), "[defaults] ssh_keys": "[]",
		"[defaults] autostart": fmt.Sprint(vm.Autostart),
		"[defaults] disk":      fmt.Sprintf("%q", FormatSize(vm.Limits.DiskBytes)),
		"[defaults] cpu_max":   "none", "[defaults] io_weight": fmt.Sprint(vm.Limits.IOWeight),
		"[host] allow":  "[]",
		"[host] ipv6":   fmt.Sprint(h.IPv6),
		"[host] egress": list(EgressNames(h.Egress)),
	}
	// The prefix is derived from the file (a ULA, with NAT66): "derived".
	if h.NAT66 && netip.MustParsePrefix("fd00::/8").Contains(h.IPv6Prefix.Addr()) && h.IPv6Prefix.Bits() == 48 {
		defaults["[host] ipv6_prefix"] = "derived"
	}
	// Keys of [vm.NAME] with no [defaults]: the allow list adds to
	// [host]'s, the others are the VM's own.
	own := map[string]string{"allow": "[]", "egress": "[]",
		"services": list(vm.Services), "disable_services": list(vm.DisableServices), "run_once": list(vm.RunOnce),
		"files": table(len(vm.Files)), "publish": fmt.Sprint(len(vm.Publish)), "image_writable": fmt.Sprint(vm.ImageWritable),
		"secrets": table(len(vm.Secrets)), "volumes": table(len(vm.Volumes)),
		"host": "placed"}
	if len(vm.Publish) == 0 {
		own["publish"] = "[]"
	}
	if vm.Limits.CPUMax != 0 {
		defaults["[defaults] cpu_max"] = fmt.Sprintf("\"%d%%\"", vm.Limits.CPUMax)
	}
	// Every key the parser knows, and no other.
	want := map[string]bool{}
	for _, k := range hostKeys {
		if k != "tailscale" && k != "metrics" { // the tables [host.tailscale], [host.metrics]
			want["[host] "+k] = true
		}
	}
	for _, k := range tailscaleKeys {
		want["[host.tailscale] "+k] = true
	}
	for _, k := range metricsKeys {
		want["[host.metrics] "+k] = true
	}
	for _, k := range defaultsKeys {
		want["[defaults] "+k] = true
	}
	img := in.Images[0]
	defaults["[image.NAME] from"] = fmt.Sprintf("%q", img.From)
	defaults["[image.NAME] packages"] = list(img.Packages)
	defaults["[image.NAME] run"] = list(img.Run)
	defaults["[image.NAME] files"] = table(len(img.Files))
	for _, k := range imageKeys {
		want["[image.NAME] "+k] = true
	}
	for _, k := range vmKeys {
		want["[vm.NAME] "+k] = true
		if d, ok := own[k]; ok {
			defaults["[vm.NAME] "+k] = d
		} else if k != "subnet" {
			defaults["[vm.NAME] "+k] = "[defaults]"
			if !slices.Contains(defaultsKeys, k) {
				t.Errorf("[vm.NAME] %s is not a key of [defaults]; give it a default of its own here", k)
			}
		}
	}
	// A fleet's tables: a host's own keys, and the part its daemon writes.
	for _, k := range fleetHostKeys {
		want["[fleet.host.NAME] "+k] = true
		defaults["[fleet.host.NAME] "+k] = "[host]"
	}
	defaults["[fleet.host.NAME] address"], defaults["[fleet.host.NAME] memory"] = "required", "required"
	for _, k := range partKeys {
		want["[fleet.part] "+k] = true
		defaults["[fleet.part] "+k] = "written"
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("the README's reference lacks %s", k)
		}
	}
	for k, v := range got {
		switch {
		case !want[k]:
			t.Errorf("the README's reference has %s, which infra.toml does not", k)
		case v != defaults[k]:
			t.Errorf("the README says %s defaults to %s; the code says %s", k, v, defaults[k])
		}
	}
}

// list and table write an empty list or table as the README does.
func list(l []string) string {
	if len(l) == 0 {
		return "[]"
	}
	return fmt.Sprintf("%q", l)
}

func table(n int) string {
	if n == 0 {
		return "{}"
	}
	return fmt.Sprint(n)
}

// metricsDefault writes the endpoint's default, off, as the README does.
func metricsDefault(listen string) string {
	if listen == "" {
		return "off"
	}
	return fmt.Sprintf("%q", listen)
}
