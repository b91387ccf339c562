package tailscale

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/tailscale/tailscaletest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// model is vm1 and vm2 with [host.tailscale] as given, IPv4 only, or with
// IPv6 from 2001:db8:7::/48 (their /64s are 2001:db8:7:100:: and :200::).
func model(t *testing.T, enabled config.TailscaleMode, socket string, ipv6 bool) *config.Infra {
	t.Helper()
	src := "[host]\nuplink = \"eth0\"\nipv6 = false\n"
	if ipv6 {
		src = "[host]\nuplink = \"eth0\"\nipv6_prefix = \"2001:db8:7::/48\"\n"
	}
	src += "[host.tailscale]\nsocket = \"" + socket + "\"\n"
	if enabled != config.TailscaleAuto {
		src += "enabled = " + string(enabled) + "\n"
	}
	src += "[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n"
	in, err := config.Parse("infra.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func ipIn(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
	}
}

// TestDiff plans the routes against a fake tailscaled in a fresh network
// namespace, where "auto" looks for tailscale0 and a removed VM's bridge
// can exist. It checks the plan's actions and messages, applies them, and
// checks what tailscaled was told.
func TestDiff(t *testing.T) {
	ns := testenv.NetNS(t)
	ipIn(t, ns, "link", "add", "br-old", "type", "bridge")
	ipIn(t, ns, "link", "set", "br-old", "alias", config.AliasPrefix+"old")
	ipIn(t, ns, "addr", "add", "10.9.0.1/24", "dev", "br-old")

	tests := []struct {
		name      string
		enabled   config.TailscaleMode
		tailscale bool   // tailscale0 exists
		state     string // the fake's state; "" for no tailscaled (a bare socket file if socket is set)
		socket    bool
		routes    string // advertised before
		approved  string

		withdraw, advertise string // the actions' String, "" for none
		warning, note       string // what they contain, "" for none
		after               string // advertised after apply
		calls               bool   // tailscaled is asked anything
		ipv6                bool   // the VMs have IPv6
	}{
		{name: "IPv6 subnets with the IPv4 ones", tailscale: true, state: "Running", routes: "192.168.1.0/24", ipv6: true, calls: true,
			advertise: "tailscale --socket=SOCK set --advertise-routes=192.168.1.0/24,10.1.0.0/24,10.2.0.0/24,2001:db8:7:100::/64,2001:db8:7:200::/64  # advertise the VM subnets 10.1.0.0/24,10.2.0.0/24,2001:db8:7:100::/64,2001:db8:7:200::/64",
			note:      "the control server has not approved 10.1.0.0/24,10.2.0.0/24,2001:db8:7:100::/64,2001:db8:7:200::/64 yet",
			after:     "192.168.1.0/24 10.1.0.0/24 10.2.0.0/24 2001:db8:7:100::/64 2001:db8:7:200::/64"},
		{name: "disabled", enabled: config.TailscaleOff, tailscale: true, state: "Running", routes: "192.168.1.0/24",
			after: "192.168.1.0/24"},
		{name: "auto, no tailscaled",
			note: "tailscaled is not running (no tailscale0, no SOCK), so the VMs cannot be reached from a tailnet yet.\n  Seed step 4, on this host: tailscale up --advertise-routes=10.1.0.0/24,10.2.0.0/24\n  then approve the routes in the Tailscale admin console"},
		{name: "auto leaves a tailscaled without tailscale0 alone", state: "Running", routes: "192.168.1.0/24",
			note:  "tailscaled's socket SOCK exists but its tailscale0 interface is not on this host's network, so apply leaves it alone (set enabled = true",
			after: "192.168.1.0/24"},
		{name: "auto, tailscale0 but no answer", tailscale: true, socket: true,
			note: "tailscaled does not answer on SOCK (connect: connection refused), so the VMs cannot be reached"},
		{name: "enabled, no tailscaled", enabled: config.TailscaleOn,
			warning: "tailscaled does not answer on SOCK (connect: no such file or directory)"},
		{name: "auto, running: user route kept, VM subnets added", tailscale: true, state: "Running", routes: "192.168.1.0/24", calls: true,
			advertise: "tailscale --socket=SOCK set --advertise-routes=192.168.1.0/24,10.1.0.0/24,10.2.0.0/24  # advertise the VM subnets 10.1.0.0/24,10.2.0.0/24",
			note:      "the control server has not approved 10.1.0.0/24,10.2.0.0/24 yet: approve the routes in the Tailscale admin console (Machines → hv → Edit route settings)",
			after:     "192.168.1.0/24 10.1.0.0/24 10.2.0.0/24"},
		{name: "userspace networking with enabled = true", enabled: config.TailscaleOn, state: "Running", approved: "10.1.0.0/24 10.2.0.0/24", calls: true,
			advertise: "tailscale --socket=SOCK set --advertise-routes=10.1.0.0/24,10.2.0.0/24  # advertise",
			after:     "10.1.0.0/24 10.2.0.0/24"},
		{name: "removed VM withdrawn first", tailscale: true, state: "Running", routes: "10.1.0.0/24 10.9.0.0/24 192.168.1.0/24", approved: "10.1.0.0/24 10.2.0.0/24", calls: true,
			withdraw:  "tailscale --socket=SOCK set --advertise-routes=10.1.0.0/24,192.168.1.0/24  # withdraw 10.9.0.0/24: no VM has it any more",
			advertise: "tailscale --socket=SOCK set --advertise-routes=10.1.0.0/24,192.168.1.0/24,10.2.0.0/24  # advertise the VM subnet 10.2.0.0/24",
			after:     "10.1.0.0/24 192.168.1.0/24 10.2.0.0/24"},
		{name: "logged out: routes set, warned with every route", tailscale: true, state: "NeedsLogin", routes: "192.168.1.0/24", calls: true,
			advertise: "tailscale --socket=SOCK set --advertise-routes=192.168.1.0/24,10.1.0.0/24,10.2.0.0/24",
			warning:   "tailscaled is logged out (state NeedsLogin): tailscaled keeps the routes, but they reach the tailnet only once tailscale is up on this host.\n  Seed step 4, on this host: tailscale up --login-server=https://ctl.example --advertise-routes=192.168.1.0/24,10.1.0.0/24,10.2.0.0/24",
			after:     "192.168.1.0/24 10.1.0.0/24 10.2.0.0/24"},
		{name: "in step and approved", tailscale: true, state: "Running", routes: "10.2.0.0/24 10.1.0.0/24", approved: "10.1.0.0/24 10.2.0.0/24", calls: true,
			after: "10.2.0.0/24 10.1.0.0/24"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.tailscale {
				ipIn(t, ns, "tuntap", "add", "dev", config.Tailscale, "mode", "tun")
				defer ipIn(t, ns, "link", "del", config.Tailscale)
			}
			socket := filepath.Join(t.TempDir(), "ts.sock")
			var fake *tailscaletest.Fake
			switch {
			case tt.state != "":
				fake = tailscaletest.Start(t, socket, tt.state, prefixes(tt.routes), prefixes(tt.approved))
			case tt.socket: // a socket nobody listens on
				ln, err := net.Listen("unix", socket)
				if err != nil {
					t.Fatal(err)
				}
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				ln.Close()
			}
			enabled := tt.enabled
			if enabled == "" {
				enabled = config.TailscaleAuto
			}
			in := model(t, enabled, socket, tt.ipv6)
			var p action.Diff
			sandbox.Do(ns, func() error { p = Diff(in); return nil })
			if len(p.Cleanup) > 1 || len(p.Setup) > 1 {
				t.Fatalf("got %v then %v, want at most one SetRoutes each", p.Cleanup, p.Setup)
			}

			sub := func(s string) string { return strings.ReplaceAll(s, "SOCK", socket) }
			for _, c := range []struct {
				what string
				got  []action.Action
				want string
			}{{"withdraw", p.Cleanup, tt.withdraw}, {"advertise", p.Setup, tt.advertise}} {
				switch {
				case len(c.got) == 0 && c.want != "":
					t.Errorf("%s: got none, want %q", c.what, sub(c.want))
				case len(c.got) > 0 && (!strings.HasPrefix(c.got[0].String(), sub(c.want)) || c.want == ""):
					t.Errorf("%s:\ngot  %q\nwant %q", c.what, c.got[0].String(), sub(c.want))
				}
			}
			for _, c := range []struct {
				what string
				got  []string
				want string
			}{{"warning", p.Warnings, tt.warning}, {"note", p.Notes, tt.note}} {
				got := strings.Join(c.got, "\n")
				if c.want == "" && got != "" || !strings.Contains(got, sub(c.want)) {
					t.Errorf("%s:\ngot  %q\nwant %q", c.what, got, sub(c.want))
				}
			}
			if fake == nil {
				return
			}
			for _, a := range append(p.Cleanup, p.Setup...) {
				if err := a.Apply(); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := fake.Advertised(), tt.after; got != want {
				t.Errorf("advertised after apply: got %q, want %q", got, want)
			}
			if got := fake.Calls() > 0; got != tt.calls {
				t.Errorf("tailscaled was asked: got %v, want %v (%d calls)", got, tt.calls, fake.Calls())
			}
			// What was applied is in step: a second plan changes nothing.
			if tt.calls {
				var again action.Diff
				sandbox.Do(ns, func() error { again = Diff(in); return nil })
				if !again.Empty() {
					t.Errorf("second plan: %v %v, want no changes", again.Cleanup, again.Setup)
				}
			}
		})
	}
}

// TestStatusReport prints the report in each situation a user meets.
func TestStatusReport(t *testing.T) {
	ns := testenv.NetNS(t)
	tests := []struct {
		name                    string
		enabled                 config.TailscaleMode
		state, routes, approved string
		want                    []string
		ok                      bool
		ipv6                    bool
	}{
		{name: "IPv6 subnets with the IPv4 ones", state: "Running", ipv6: true,
			routes: "10.1.0.0/24 10.2.0.0/24 2001:db8:7:100::/64 2001:db8:7:200::/64", approved: "10.1.0.0/24 10.2.0.0/24 2001:db8:7:100::/64", want: []string{
				"  ROUTE                VM   ADVERTISED  APPROVED\n  10.1.0.0/24          vm1  yes         yes\n  10.2.0.0/24          vm2  yes         yes\n" +
					"  2001:db8:7:100::/64  vm1  yes         yes\n  2001:db8:7:200::/64  vm2  yes         no\n",
				"  To approve 2001:db8:7:200::/64: approve the route"}},
		{name: "off", enabled: config.TailscaleOff, want: []string{"tailscale: disabled in infra.toml ([host.tailscale] enabled = false)"}},
		{name: "absent", enabled: config.TailscaleOn, want: []string{"tailscale: tailscaled does not answer on", "Seed step 4, on this host: tailscale up --advertise-routes=10.1.0.0/24,10.2.0.0/24"}},
		{name: "not applied yet", state: "Running", routes: "192.168.1.0/24", want: []string{
			"tailscale: Running as hv, control https://ctl.example",
			"  ROUTE        VM   ADVERTISED  APPROVED\n  10.1.0.0/24  vm1  no          no\n  10.2.0.0/24  vm2  no          no\n",
			"  also advertised, kept by apply: 192.168.1.0/24",
			"  Run `microvm apply` to advertise 10.1.0.0/24,10.2.0.0/24."}},
		{name: "waiting for approval", state: "Running", routes: "10.1.0.0/24 10.2.0.0/24", approved: "10.1.0.0/24", want: []string{
			"  10.1.0.0/24  vm1  yes         yes\n  10.2.0.0/24  vm2  yes         no\n",
			"  To approve 10.2.0.0/24: approve the route in the Tailscale admin console (Machines → hv → Edit route settings)"}},
		{name: "all approved", state: "Running", routes: "10.1.0.0/24 10.2.0.0/24", approved: "10.1.0.0/24 10.2.0.0/24", ok: true, want: []string{
			"  10.2.0.0/24  vm2  yes         yes\n"}},
		{name: "logged out", state: "NeedsLogin", routes: "10.1.0.0/24 10.2.0.0/24", want: []string{
			"tailscale: NeedsLogin", "  tailscaled is logged out (state NeedsLogin)", "tailscale up --login-server=https://ctl.example --advertise-routes=10.1.0.0/24,10.2.0.0/24"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "ts.sock")
			if tt.state != "" {
				tailscaletest.Start(t, socket, tt.state, prefixes(tt.routes), prefixes(tt.approved))
			}
			enabled := tt.enabled
			if enabled == "" {
				enabled = config.TailscaleOn
			}
			var r *Report
			sandbox.Do(ns, func() error { r = Status(t.Context(), model(t, enabled, socket, tt.ipv6)); return nil })
			var b strings.Builder
			r.Print(&b)
			for _, want := range tt.want {
				if !strings.Contains(b.String(), want) {
					t.Errorf("report lacks %q:\n%s", want, b.String())
				}
			}
			if got := r.OK(); got != tt.ok {
				t.Errorf("OK: got %v, want %v", got, tt.ok)
			}
		})
	}
}
