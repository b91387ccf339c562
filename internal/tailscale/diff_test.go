package tailscale

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

func texts(acts []action.Action) []string {
	out := []string{}
	for _, a := range acts {
		out = append(out, a.String())
	}
	return out
}

// TestDiffDecides compares the model's subnets with what tailscaled said,
// read into a value, without root or a tailscaled: a removed VM's subnet
// is withdrawn first and the missing ones advertised last, the user's own
// routes kept; what only the user can do is said as a warning or a note.
func TestDiffDecides(t *testing.T) {
	p := func(s string) []netip.Prefix {
		var out []netip.Prefix
		for _, f := range strings.Fields(s) {
			out = append(out, netip.MustParsePrefix(f))
		}
		return out
	}
	running := func(routes, allowed string) *daemon {
		return &daemon{state: "Running", routes: p(routes), allowed: p(allowed), name: "hv", hostname: "hv.local", control: "https://controlplane.tailscale.com"}
	}
	const set = "tailscale set --advertise-routes="
	for _, tt := range []struct {
		name           string
		enabled        config.TailscaleMode
		o              observed
		cleanup, setup []string
		warning, note  string // what they hold; "" for none
	}{
		{name: "not running, auto", enabled: config.TailscaleAuto,
			o:    observed{daemon: &daemon{down: "tailscaled is not running"}},
			note: "tailscaled is not running, so the VMs cannot be reached from a tailnet yet.\n  Seed step 4, on this host: tailscale up --advertise-routes=10.1.0.0/24,10.2.0.0/24"},
		{name: "not running, enabled = true", enabled: config.TailscaleOn,
			o:       observed{daemon: &daemon{down: "tailscaled does not answer"}},
			warning: "tailscaled does not answer, so the VMs cannot be reached from a tailnet yet."},
		{name: "nothing advertised yet", o: observed{daemon: running("", "")},
			setup: []string{set + "10.1.0.0/24,10.2.0.0/24  # advertise the VM subnets 10.1.0.0/24,10.2.0.0/24"},
			note:  "the control server has not approved 10.1.0.0/24,10.2.0.0/24 yet: approve the routes in the Tailscale admin console (Machines → hv → Edit route settings)"},
		{name: "a VM removed, one added, the user's route kept",
			o:       observed{daemon: running("10.1.0.0/24 10.9.0.0/24 192.168.1.0/24", "10.1.0.0/24 10.2.0.0/24"), gone: p("10.9.0.0/24")},
			cleanup: []string{set + "10.1.0.0/24,192.168.1.0/24  # withdraw 10.9.0.0/24: no VM has it any more"},
			setup:   []string{set + "10.1.0.0/24,192.168.1.0/24,10.2.0.0/24  # advertise the VM subnet 10.2.0.0/24"}},
		{name: "in step and approved", o: observed{daemon: running("10.2.0.0/24 10.1.0.0/24", "10.1.0.0/24 10.2.0.0/24")}},
		{name: "the removed VMs cannot be told",
			o:       observed{daemon: running("10.1.0.0/24 10.2.0.0/24 10.9.0.0/24", "10.1.0.0/24 10.2.0.0/24"), goneErr: errors.New("listing links: permission denied")},
			warning: "cannot tell which advertised routes belonged to removed VMs (listing links: permission denied); none is withdrawn"},
		{name: "logged out, with a login server",
			o: observed{daemon: &daemon{state: "NeedsLogin", routes: p("10.1.0.0/24"), control: "https://hs.example.com",
				loggedOut: "tailscaled is logged out (state NeedsLogin)"}},
			setup:   []string{set + "10.1.0.0/24,10.2.0.0/24  # advertise the VM subnet 10.2.0.0/24"},
			warning: "tailscaled is logged out (state NeedsLogin): tailscaled keeps the routes, but they reach the tailnet only once tailscale is up on this host.\n  Seed step 4, on this host: tailscale up --login-server=https://hs.example.com --advertise-routes=10.1.0.0/24,10.2.0.0/24"},
		{name: "not in the tailnet yet: this host's own name", o: observed{daemon: &daemon{state: "Running", routes: p("10.1.0.0/24 10.2.0.0/24"), hostname: "hv.local"}},
			note: "(Machines → hv.local → Edit route settings)"},
	} {
		enabled := tt.enabled
		if enabled == "" {
			enabled = config.TailscaleAuto
		}
		in := model(t, enabled, config.DefaultTailscaleSocket, false)
		d := diff(in, tt.o)
		for _, c := range []struct {
			what      string
			got, want []string
		}{{"cleanup", texts(d.Cleanup), tt.cleanup}, {"setup", texts(d.Setup), tt.setup}} {
			if c.want == nil {
				c.want = []string{}
			}
			if !slices.Equal(c.got, c.want) {
				t.Errorf("%s: %s:\ngot  %q\nwant %q", tt.name, c.what, c.got, c.want)
			}
		}
		for _, c := range []struct {
			what string
			got  []string
			want string
		}{{"warning", d.Warnings, tt.warning}, {"note", d.Notes, tt.note}} {
			got := strings.Join(c.got, "\n")
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Errorf("%s: %s:\ngot  %q\nwant %q", tt.name, c.what, got, c.want)
			}
		}
	}
}
