package tailscale

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"text/tabwriter"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Report is where the VM subnets stand in the tailnet: what `microvm status
// --host` prints.
type Report struct {
	Enabled config.TailscaleMode
	Socket  string
	Down    string // why tailscaled cannot take routes; "" when it can
	Problem string // why the routes do not reach the tailnet (logged out); "" when they can
	State   string // tailscaled's backend state, e.g. "Running"
	Host    string // this host's name in the tailnet
	Addrs   []netip.Addr
	Control string // the control server's URL
	Routes  []Route
	Others  []netip.Prefix // routes advertised for other reasons, which apply keeps
	step    string         // the design's step 4 or the approval step, when one is needed
}

// Route is one VM subnet, IPv4 or IPv6.
type Route struct {
	VM         string
	Subnet     netip.Prefix
	Advertised bool // in tailscaled's advertised routes
	Approved   bool // approved by the control server (in this host's AllowedIPs)
}

// Status reads the state of every VM subnet from tailscaled. It needs no
// network namespace of its own beyond "auto" mode's check for tailscale0.
func Status(ctx context.Context, in *config.Infra) *Report {
	ts := in.Host.Tailscale
	r := &Report{Enabled: ts.Enabled, Socket: ts.Socket}
	vms := subnets(in)
	if ts.Enabled == config.TailscaleOff {
		r.Down = "disabled in infra.toml ([host.tailscale] enabled = false)"
		return r
	}
	d := connect(ctx, ts)
	if d.down != "" {
		r.Down, r.step = d.down, stepFour(vms, "")
		return r
	}
	r.State, r.Control, r.Problem = d.state, d.control, d.loggedOut
	r.Host, r.Addrs = d.name, d.addrs
	var missing, waiting []netip.Prefix
	for _, s := range vms {
		rt := Route{VM: vmOf(in, s), Subnet: s, Approved: d.approved(s)}
		rt.Advertised = slices.ContainsFunc(d.routes, func(p netip.Prefix) bool { return p.Masked() == s })
		r.Routes = append(r.Routes, rt)
		switch {
		case !rt.Advertised:
			missing = append(missing, s)
		case !rt.Approved:
			waiting = append(waiting, s)
		}
	}
	for _, p := range d.routes {
		if !slices.Contains(vms, p.Masked()) {
			r.Others = append(r.Others, p)
		}
	}
	switch {
	case r.Problem != "":
		r.step = stepFour(Merge(d.routes, vms, nil), d.control)
	case len(missing) > 0:
		r.step = "  Run `microvm apply` to advertise " + join(missing) + "."
	case len(waiting) > 0:
		r.step = "  To approve " + join(waiting) + ": " + approveStep(d.hostName(), waiting)
	}
	return r
}

// vmOf names the VM whose subnet (IPv4 or IPv6) s is.
func vmOf(in *config.Infra, s netip.Prefix) string {
	for _, vm := range in.VMs {
		if slices.Contains(vm.Subnets(), s) {
			return vm.Name
		}
	}
	return ""
}

// OK reports whether every VM subnet is advertised and approved.
func (r *Report) OK() bool {
	if r.Down != "" || r.Problem != "" {
		return false
	}
	for _, rt := range r.Routes {
		if !rt.Advertised || !rt.Approved {
			return false
		}
	}
	return true
}

// Print writes the report for a person: one line per VM subnet, then the
// step that is missing, if any.
func (r *Report) Print(w io.Writer) {
	if r.Down != "" {
		fmt.Fprintf(w, "tailscale: %s\n", r.Down)
		if r.step != "" {
			fmt.Fprintln(w, r.step)
		}
		return
	}
	fmt.Fprintf(w, "tailscale: %s", r.State)
	if r.Host != "" {
		fmt.Fprintf(w, " as %s", r.Host)
		for _, a := range r.Addrs {
			fmt.Fprintf(w, " %s", a)
		}
	}
	if r.Control != "" {
		fmt.Fprintf(w, ", control %s", r.Control)
	}
	fmt.Fprintln(w)
	if r.Problem != "" {
		fmt.Fprintf(w, "  %s\n", r.Problem)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROUTE\tVM\tADVERTISED\tAPPROVED")
	for _, rt := range r.Routes {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", rt.Subnet, rt.VM, yesNo(rt.Advertised), yesNo(rt.Approved))
	}
	tw.Flush()
	if len(r.Others) > 0 {
		fmt.Fprintf(w, "  also advertised, kept by apply: %s\n", join(r.Others))
	}
	if r.step != "" {
		fmt.Fprintln(w, r.step)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
