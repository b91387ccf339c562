package config

import (
	"net/netip"
	"path/filepath"

	"github.com/pelletier/go-toml/v2/unstable"
)

// [host.tailscale] says how the VM networks meet the tailnet, the design's
// "Tailscale on Host (advertising 10.1.0.0/24 ...)":
//
//	[host.tailscale]
//	enabled = "auto"                                 # true, false, or "auto" (the default)
//	socket = "/var/run/tailscale/tailscaled.sock"    # tailscaled's local API
//	allow_vm_to_tailnet = false                      # VMs may open connections into the tailnet
//
// Tailnet clients reach every VM whatever the setting; a VM reaching into
// the tailnet is what allow_vm_to_tailnet turns on. A VM then reaches the
// tailnet as the host (its connections are masqueraded to the host's
// tailnet address), so the tailnet's access rules for the host apply.

// TailscaleSettings is the [host.tailscale] table with defaults filled in.
type TailscaleSettings struct {
	Enabled          TailscaleMode
	Socket           string // tailscaled's local API socket
	AllowVMToTailnet bool   // VMs may open connections to tailnet addresses (as the host)
}

// TailscaleMode is the value of enabled.
type TailscaleMode string

const (
	// TailscaleAuto advertises the routes when tailscaled runs on this
	// host: it answers on the socket and its tailscale0 interface is in the
	// network namespace the program manages.
	TailscaleAuto TailscaleMode = "auto"
	// TailscaleOn always advertises through the socket (also with
	// userspace networking, which has no tailscale0), and warns when
	// tailscaled cannot take the routes.
	TailscaleOn TailscaleMode = "true"
	// TailscaleOff leaves tailscaled alone.
	TailscaleOff TailscaleMode = "false"
)

// DefaultTailscaleSocket is where tailscaled listens on Linux.
const DefaultTailscaleSocket = "/var/run/tailscale/tailscaled.sock"

// TailscaleRange6 is the IPv6 range tailnet addresses come from: VMs
// reach it, as the IPv4 range, only with allow_vm_to_tailnet. No
// ipv6_prefix may overlap it.
var TailscaleRange6 = netip.MustParsePrefix("fd7a:115c:a1e0::/48")

var tailscaleKeys = []string{"enabled", "socket", "allow_vm_to_tailnet"}

// tailscale reads [host.tailscale].
func (p *parser) tailscale(h *Host) {
	ts := TailscaleSettings{Enabled: TailscaleAuto, Socket: DefaultTailscaleSocket}
	if v, ok := p.ts["enabled"]; ok {
		switch {
		case v.kind == unstable.Bool:
			ts.Enabled = TailscaleMode(v.str)
		case v.kind == unstable.String && v.str == string(TailscaleAuto):
			ts.Enabled = TailscaleAuto
		default:
			what := kindName(v.kind)
			if v.kind == unstable.String {
				what = `"` + v.str + `"`
			}
			p.errorf(v.pos, `host.tailscale.enabled must be true, false or "auto", not %s; "auto" (the default) advertises the VM subnets when tailscaled runs on this host`, what)
		}
	}
	if v, ok := p.ts["socket"]; ok {
		if s, ok := p.str(v, "host.tailscale.socket"); ok {
			switch {
			case !filepath.IsAbs(s) || filepath.Clean(s) != s:
				p.errorf(v.pos, "host.tailscale.socket = %q must be a clean absolute path, e.g. %q", s, DefaultTailscaleSocket)
			case len(s) > maxSocketPath:
				p.errorf(v.pos, "host.tailscale.socket is %d bytes; a Unix socket path has at most %d", len(s), maxSocketPath)
			default:
				ts.Socket = s
			}
		}
	}
	if v, ok := p.ts["allow_vm_to_tailnet"]; ok {
		if v.kind != unstable.Bool {
			p.errorf(v.pos, "host.tailscale.allow_vm_to_tailnet must be true or false, not %s", kindName(v.kind))
		} else {
			ts.AllowVMToTailnet = v.str == "true"
		}
	}
	h.Tailscale = ts
}
