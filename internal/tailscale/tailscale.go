package tailscale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"tailscale.com/client/local"
	"tailscale.com/ipn"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
)

// Timeout bounds each conversation with tailscaled, so a hung daemon
// cannot hang plan or apply.
var Timeout = 10 * time.Second

// daemon is what the program learns from tailscaled.
type daemon struct {
	state    string         // ipn backend state: "Running", "NeedsLogin", "Stopped", ...
	routes   []netip.Prefix // the routes it advertises
	allowed  []netip.Prefix // this host's AllowedIPs: its approved routes are among them
	name     string         // this host's name in the tailnet; "" before it logs in
	hostname string         // this host's name (os.Hostname), for when name is ""
	addrs    []netip.Addr   // this host's tailnet addresses
	control  string         // the control server tailscaled logs in to
	// down says why tailscaled cannot take routes; "" when it can.
	down string
	// loggedOut says why routes set now do not reach the tailnet yet;
	// tailscaled still keeps them for when it logs in.
	loggedOut string
}

func client(socket string) *local.Client {
	return &local.Client{Socket: socket, UseSocketOnly: true}
}

// connect asks tailscaled for its state. In "auto" mode it first checks that
// tailscaled runs on this host: that its tailscale0 is in the network
// namespace the program manages. A socket alone does not show that, and the
// program must not change the routes of a tailscaled that serves something
// else (another namespace, a container, a userspace-networking daemon).
func connect(ctx context.Context, ts config.TailscaleSettings) *daemon {
	d := &daemon{}
	if ts.Enabled == config.TailscaleAuto {
		// One link asked for by name: net.InterfaceByName lists them all,
		// which at 250 VMs is 500 links.
		if _, err := netlink.LinkByName(config.Tailscale); err != nil {
			if _, err := os.Stat(ts.Socket); err == nil {
				d.down = fmt.Sprintf("tailscaled's socket %s exists but its %s interface is not on this host's network, so apply leaves it alone (set enabled = true in [host.tailscale] if it runs with userspace networking)", ts.Socket, config.Tailscale)
			} else {
				d.down = fmt.Sprintf("tailscaled is not running (no %s, no %s)", config.Tailscale, ts.Socket)
			}
			return d
		}
	}
	lc := client(ts.Socket)
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil {
		d.down = fmt.Sprintf("tailscaled does not answer on %s (%s)", ts.Socket, short(err))
		return d
	}
	prefs, err := lc.GetPrefs(ctx)
	if err != nil {
		d.down = fmt.Sprintf("reading tailscaled's settings on %s: %s", ts.Socket, short(err))
		return d
	}
	d.state, d.routes, d.control = st.BackendState, prefs.AdvertiseRoutes, prefs.ControlURL
	if st.Self != nil {
		d.name, d.addrs = st.Self.HostName, st.Self.TailscaleIPs
		if st.Self.AllowedIPs != nil {
			d.allowed = st.Self.AllowedIPs.AsSlice()
		}
	}
	// Without a name there is none to show but this one.
	d.hostname, _ = os.Hostname()
	switch d.state {
	case ipn.Running.String(), ipn.Starting.String():
	case ipn.Stopped.String():
		d.loggedOut = "tailscale is down on this host (tailscale down)"
	case ipn.NeedsMachineAuth.String():
		d.loggedOut = "this host waits for the tailnet's admin to approve it as a device"
	default:
		d.loggedOut = fmt.Sprintf("tailscaled is logged out (state %s)", d.state)
	}
	return d
}

// short reduces a local API error to its cause, for a one-line message.
func short(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// approved reports whether the control server approved route p for this
// host: approved routes are in the host's own AllowedIPs.
func (d *daemon) approved(p netip.Prefix) bool {
	return slices.Contains(d.allowed, p.Masked())
}

// hostName is this host's name in the tailnet, for the approval step.
func (d *daemon) hostName() string {
	switch {
	case d.name != "":
		return d.name
	case d.hostname != "":
		return d.hostname
	}
	return "this host"
}

// SetRoutes changes the routes tailscaled advertises: it withdraws Remove
// and adds Add, keeping every other route. Apply reads the routes again
// first, so a change the user made since plan is kept too.
type SetRoutes struct {
	Socket      string
	Add, Remove []netip.Prefix
	Result      []netip.Prefix // the routes after the change, as plan saw them
	Why         string         // what the change is, for the plan
}

// String is the CLI command that makes the same change. `tailscale set`
// changes only the flags it is given, unlike `tailscale up`.
func (a *SetRoutes) String() string {
	cmd := "tailscale"
	if a.Socket != config.DefaultTailscaleSocket {
		cmd += " --socket=" + a.Socket
	}
	return fmt.Sprintf("%s set --advertise-routes=%s  # %s", cmd, join(a.Result), a.Why)
}

// Optional: no VM needs its subnet advertised to start or to run, so a
// tailscaled that refuses the change does not stop the rest of apply.
func (a *SetRoutes) Optional() bool { return true }

func (a *SetRoutes) Apply() error {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	lc := client(a.Socket)
	prefs, err := lc.GetPrefs(ctx)
	if err != nil {
		return fmt.Errorf("reading tailscaled's advertised routes on %s: %w", a.Socket, err)
	}
	next := Merge(prefs.AdvertiseRoutes, a.Add, a.Remove)
	if slices.Equal(next, prefs.AdvertiseRoutes) {
		return nil
	}
	mp := &ipn.MaskedPrefs{Prefs: ipn.Prefs{AdvertiseRoutes: next}, AdvertiseRoutesSet: true}
	if _, err := lc.EditPrefs(ctx, mp); err != nil {
		return fmt.Errorf("setting tailscaled's advertised routes to %s: %w", join(next), err)
	}
	return nil
}

// observed is what Diff reads of the host: what tailscaled says, and the
// subnets of the bridges of VMs that left the file (or why they could not
// be read).
type observed struct {
	daemon  *daemon
	gone    []netip.Prefix
	goneErr error
}

// Diff plans the advertised routes for the model: Cleanup withdraws the
// subnets of VMs that left infra.toml, while their bridges still show
// they were VM subnets; Setup advertises the missing VM subnets, once the
// bridges and the firewall are in place. Warnings are said on every plan
// (tailscaled is logged out, or enabled = true and tailscaled cannot take
// the routes); Notes only with a plan that changes something (tailscaled
// is not running with enabled = "auto", or routes wait for approval).
//
// It reads links through netlink, so it acts in the network namespace of
// the calling thread. It never fails: when tailscaled cannot take the
// routes, the rest of the plan goes on and says what the user has to do.
func Diff(in *config.Infra) action.Diff {
	ts := in.Host.Tailscale
	if ts.Enabled == config.TailscaleOff {
		return action.Diff{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	o := observed{daemon: connect(ctx, ts)}
	if o.daemon.down == "" {
		o.gone, o.goneErr = hostnet.DepartedSubnets(in)
	}
	return diff(in, o)
}

// diff compares the model's subnets with what was read of the host.
func diff(in *config.Infra, o observed) action.Diff {
	ts, d := in.Host.Tailscale, o.daemon
	var p action.Diff
	vms := subnets(in)
	if d.down != "" {
		msg := d.down + ", so the VMs cannot be reached from a tailnet yet.\n" + stepFour(vms, "")
		if ts.Enabled == config.TailscaleOn {
			p.Warnings = append(p.Warnings, msg)
		} else {
			p.Notes = append(p.Notes, msg+"\n  To stop this note, set enabled = false in [host.tailscale].")
		}
		return p
	}
	if o.goneErr != nil {
		p.Warnings = append(p.Warnings, fmt.Sprintf("cannot tell which advertised routes belonged to removed VMs (%v); none is withdrawn", o.goneErr))
	}
	cur := d.routes
	withdraw, add := Changes(cur, vms, o.gone)
	if len(withdraw) > 0 {
		after := Merge(cur, nil, withdraw)
		p.Cleanup = []action.Action{&SetRoutes{Socket: ts.Socket, Remove: withdraw, Result: after,
			Why: "withdraw " + join(withdraw) + ": no VM has it any more"}}
		cur = after
	}
	if len(add) > 0 {
		a := &SetRoutes{Socket: ts.Socket, Add: add, Result: Merge(cur, add, nil),
			Why: "advertise the VM subnet" + plural(add) + " " + join(add)}
		p.Setup = []action.Action{a}
		cur = a.Result
	}
	var waiting []netip.Prefix
	for _, s := range vms {
		if !d.approved(s) {
			waiting = append(waiting, s)
		}
	}
	switch {
	case d.loggedOut != "":
		p.Warnings = append(p.Warnings, d.loggedOut+": tailscaled keeps the routes, but they reach the tailnet only once tailscale is up on this host.\n"+stepFour(cur, d.control))
	case len(waiting) > 0:
		p.Notes = append(p.Notes, fmt.Sprintf("the control server has not approved %s yet: %s", join(waiting), approveStep(d.hostName(), waiting)))
	}
	return p
}

// subnets lists the VM subnets in the model's order, IPv4 ones first and
// then their IPv6 twins.
func subnets(in *config.Infra) []netip.Prefix {
	var out, v6 []netip.Prefix
	for _, vm := range in.VMs {
		out = append(out, vm.Subnet)
		if vm.HasIPv6() {
			v6 = append(v6, vm.Subnet6)
		}
	}
	return append(out, v6...)
}

// stepFour is the design's step 4 for these routes: log in advertising them,
// then approve them. When tailscaled is logged out, routes are every route
// it will advertise: `tailscale up` sets the whole list, so a route left out
// would be withdrawn.
func stepFour(routes []netip.Prefix, control string) string {
	login := ""
	if control != "" && control != ipn.DefaultControlURL {
		login = " --login-server=" + control
	}
	return fmt.Sprintf("  Seed step 4, on this host: tailscale up%s --advertise-routes=%s\n  then %s",
		login, join(routes), approveStep("this host", routes))
}

// approveStep says how to approve routes: only the tailnet's admin can.
func approveStep(host string, routes []netip.Prefix) string {
	return fmt.Sprintf("approve the route%s in the Tailscale admin console (Machines → %s → Edit route settings) or with autoApprovers in the tailnet policy; Linux clients also need `tailscale set --accept-routes`.", plural(routes), host)
}

func join(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

func plural(ps []netip.Prefix) string {
	if len(ps) == 1 {
		return ""
	}
	return "s"
}
