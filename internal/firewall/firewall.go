// Package firewall renders the one nftables table the program owns and
// replaces it atomically. The table gives VMs NAT to the internet, isolates
// every VM from every other, stops spoofed packets, and lets a VM reach the
// host only for replies and a ping to its own gateway.
//
// "Internet only": through the uplink a VM reaches the internet and by
// default nothing else: not the uplink's own networks (the LAN, its router
// and other hosts), not private (RFC 1918), CGNAT or link-local addresses
// (cloud metadata services at 169.254.169.254 hand out credentials), nor
// Azure's WireServer or other special ranges (Blocked). Its own DNS
// server (dns) stays reachable on port 53 wherever it is, and the allow
// lists of infra.toml ([host] and [vm.NAME] allow) open more, each rule
// commented with the line it comes from.
//
// Tailnet clients (through tailscale0) reach every VM: that is how the
// seed's Tailscale subnet routes arrive. They do not reach the host at its
// addresses in the VM subnets (each 10.N.0.1 gateway lies inside the
// routes it advertises, so a tailnet ACL that opens the VM subnets would
// open the hypervisor too); the host's own tailnet address is the
// operator's business, not this table's. VMs cannot open connections into
// the tailnet unless [host.tailscale] allow_vm_to_tailnet is set, so a
// compromised VM cannot reach the operator's machines; replies to tailnet
// clients always pass. Tailnet addresses are 100.64.0.0/10 and
// fd7a:115c:a1e0::/48; VM networks are IPv4 only and every IPv6 packet from
// a VM is dropped first, so only the IPv4 range needs rules.
//
// Isolation uses sets, so the number of rules stays the same for 4 VMs or
// 250, where the design's iptables rules grow as N×(N−1).
package firewall

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"text/template"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
)

// Family and Table name the nftables table the program owns.
const (
	Family = "inet"
	Table  = config.Table
)

// ruleset is the whole table. Every line explains itself in `nft list table
// inet microvm`, which is where an operator will read it.
var ruleset = template.Must(template.New("nft").Parse(`table inet {{.Table}} {
	comment "managed by microvm; do not edit: microvm apply replaces it ({{.Hash}})"

	set vm_bridges {
		type ifname
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}"{{end}} }
	}

	set vm_sources {
		type ifname . ipv4_addr . ether_addr
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}" . {{$v.Addr}} . {{$v.MAC}}{{end}} }
	}

	set vm_gateways {
		type ifname . ipv4_addr
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}" . {{$v.Gateway}}{{end}} }
	}

	set vm_subnets {
		type ipv4_addr
		flags interval
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}{{$v.Subnet}}{{end}} }
	}

	set vm_dns {
		type ifname . ipv4_addr . inet_proto . inet_service
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}" . {{$v.DNS}} . udp . 53, "{{$v.Bridge}}" . {{$v.DNS}} . tcp . 53{{end}} }
	}

	set not_internet {
		type ipv4_addr
		flags interval
		elements = { {{range $i, $p := .Blocked}}{{if $i}}, {{end}}{{$p}}{{end}} }
	}

	set vm_openings {
		type ifname . ipv4_addr . inet_proto . inet_service
		flags interval
{{- if .Openings.Ports}}
		elements = { {{range $i, $o := .Openings.Ports}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_proto {
		type ifname . ipv4_addr . inet_proto
{{- if .Openings.Protos}}
		elements = { {{range $i, $o := .Openings.Protos}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_openings_all {
		type ifname . ipv4_addr
{{- if .Openings.All}}
		elements = { {{range $i, $o := .Openings.All}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}

	set vm_host_openings {
		type ifname . ipv4_addr . inet_proto . inet_service
		flags interval
{{- if .HostOpenings}}
		elements = { {{range $i, $o := .HostOpenings}}{{if $i}}, {{end}}{{$o}}{{end}} }
{{- end}}
	}
{{range .VMs}}
	counter drop_from_{{.Name}} {
		comment "what the firewall dropped of what {{.Name}} sent"
	}

	counter drop_to_{{.Name}} {
		comment "what the firewall dropped of what was sent to {{.Name}}"
	}
{{end}}
	map vm_drops_from {
		type ifname : counter
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}" : "drop_from_{{$v.Name}}"{{end}} }
	}

	map vm_drops_to {
		type ifname : counter
		elements = { {{range $i, $v := .VMs}}{{if $i}}, {{end}}"{{$v.Bridge}}" : "drop_to_{{$v.Name}}"{{end}} }
	}

	map published {
		type inet_proto . inet_service : ipv4_addr . inet_service
{{- if .Published}}
		elements = { {{range $i, $p := .Published}}{{if $i}}, {{end}}{{$p.Key}} : {{$p.To}}{{end}} }
{{- end}}
	}

	set published_from {
		type inet_proto . inet_service . ipv4_addr
		flags interval
{{- if .Published}}
		elements = { {{range $i, $p := .PublishedFrom}}{{if $i}}, {{end}}{{$p}}{{end}} }
{{- end}}
	}

	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		iifname @vm_bridges meta nfproto ipv6 {{.CountFrom}}
		iifname @vm_bridges meta nfproto ipv6 drop comment "VM networks are IPv4 only (so no VM reaches the tailnet's {{.TailscaleRange6}})"
		iifname @vm_bridges iifname . ip saddr . ether saddr != @vm_sources {{.CountFrom}}
		iifname @vm_bridges iifname . ip saddr . ether saddr != @vm_sources drop comment "anti-spoofing: a VM sends only from its own address and MAC"
	}

	chain input {
		type filter hook input priority filter; policy accept;
		iifname "{{.Tailscale}}" ip daddr @vm_subnets drop comment "tailnet clients reach the VMs, not the host at its addresses in their subnets (the gateways)"
		iifname != @vm_bridges accept comment "else this table judges only what VMs send to the host"
		ct state established,related accept comment "replies to the host's own connections"
		iifname . ip daddr @vm_gateways icmp type echo-request accept comment "a VM may ping its own gateway"
		iifname . ip daddr . meta l4proto . th dport @vm_host_openings accept comment "a VM reaches the ports of the host its allow list opens at its own gateway"
		{{.CountFrom}}
		drop comment "nothing else from a VM reaches the host (no SSH, no other gateways)"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @vm_bridges oifname @vm_bridges ct state established,related accept comment "replies within an opening between two VMs"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr . meta l4proto . th dport @vm_openings accept comment "openings: vm:NAME PROTO PORTS in the allow list of the VM that connects"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr . meta l4proto @vm_openings_proto accept comment "openings of a protocol, every port (vm:NAME icmp, vm:NAME tcp)"
		iifname @vm_bridges oifname @vm_bridges ct state new iifname . ip daddr @vm_openings_all accept comment "openings of every protocol (vm:NAME)"
		iifname @vm_bridges oifname @vm_bridges counter name iifname map @vm_drops_from counter name oifname map @vm_drops_to comment "{{.Counted}}"
		iifname @vm_bridges oifname @vm_bridges drop comment "isolation: no VM reaches another, but through an opening"
		ct state established,related accept comment "replies"
		oifname @vm_bridges ct status dnat accept comment "the internet reaches the ports a VM publishes (publish)"
		iifname "{{.Tailscale}}" oifname @vm_bridges accept comment "tailnet clients reach every VM"
{{- if .AllowVMToTailnet}}
		iifname @vm_bridges oifname "{{.Tailscale}}" ip daddr {{.TailscaleRange}} accept comment "VMs may open connections into the tailnet (allow_vm_to_tailnet)"
{{- end}}
		iifname @vm_bridges oifname "{{.Uplink}}" iifname . ip daddr . meta l4proto . th dport @vm_dns accept comment "each VM reaches its own DNS server (dns), wherever it is"
{{- range .Allow}}
		iifname {{.Bridge}} oifname "{{$.Uplink}}" ip daddr {{.Net}}{{if .Proto}} meta l4proto {{.Proto}}{{end}}{{if .Ports}} th dport { {{.Ports}} }{{end}} accept comment "allow {{.Text}} ({{.Who}})"
{{- end}}
		iifname @vm_bridges oifname "{{.Uplink}}" ip daddr @not_internet {{.CountFrom}}
		iifname @vm_bridges oifname "{{.Uplink}}" ip daddr @not_internet drop comment "internet only: not the uplink's networks, private, CGNAT, link-local (cloud metadata) or special ranges"
		iifname @vm_bridges oifname "{{.Uplink}}" accept comment "VMs reach the internet"
		iifname @vm_bridges {{.CountFrom}}
		iifname @vm_bridges drop comment "VMs reach nothing else: {{if not .AllowVMToTailnet}}not the tailnet, {{end}}not other host networks"
		oifname @vm_bridges counter name oifname map @vm_drops_to comment "{{.Counted}}"
		oifname @vm_bridges drop comment "nobody else opens connections into a VM"
	}

	chain publish {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "{{.Uplink}}" fib daddr type local meta l4proto . th dport . ip saddr @published_from dnat ip to meta l4proto . th dport map @published comment "publish: the host's ports a VM publishes go to the VM"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "{{.Uplink}}" ip saddr @vm_subnets masquerade comment "NAT: VMs share the uplink's address"
{{- if .AllowVMToTailnet}}
		oifname "{{.Tailscale}}" ip saddr @vm_subnets masquerade comment "VMs reach the tailnet as the host, whose tailnet address peers know"
{{- end}}
	}
}
`))

// Blocked are the destinations beyond the internet: what no VM reaches
// through the uplink unless an allow list says so, besides the uplink's own
// networks. The documentation ranges (192.0.2.0/24, 198.51.100.0/24,
// 203.0.113.0/24) are left out: nothing real is there, and the sandbox's
// "internet" uses them.
var Blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),  // "this network"
	netip.MustParsePrefix("10.0.0.0/8"), // private (RFC 1918)
	// CGNAT (RFC 6598) and the tailnet's addresses; Alibaba Cloud's
	// metadata service is at 100.100.100.200.
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"), // loopback
	// Azure's WireServer (the VM agent's and extensions' endpoint, which
	// hands out certificates and settings, and Azure's DNS): a public
	// address that answers only inside Azure.
	netip.MustParsePrefix("168.63.129.16/32"),
	// Link-local: the instance metadata services of AWS, GCP
	// (metadata.google.internal), Azure, Oracle, DigitalOcean, OpenStack
	// and Hetzner at 169.254.169.254, which hand out credentials; AWS's
	// time and DNS (169.254.169.123, .253) and ECS credentials
	// (169.254.170.2), Tencent's metadata (169.254.0.23), Scaleway's
	// (169.254.42.42). AWS's IPv6 metadata (fd00:ec2::254) is not in this
	// list: every IPv6 packet from a VM is dropped.
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"), // private (RFC 1918)
	// IETF protocol assignments; Oracle Cloud's metadata is also at
	// 192.0.0.192.
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"), // private (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking, often used inside networks
	netip.MustParsePrefix("224.0.0.0/3"),    // multicast, reserved, broadcast
}

// Ruleset is the table for the model and this host's uplink, as nft text.
// The uplink's networks are read from the host; if they cannot be, the
// table fails closed: VMs reach nothing through the uplink.
func Ruleset(in *config.Infra) string {
	nets, err := hostnet.UplinkNetworks(in.Host.Uplink)
	if err != nil {
		nets = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	}
	return Render(in, nets)
}

// allowRule is one allow entry as the template writes it. Its comment
// says what it is from the model alone, never where the file has it: a
// rule must stay the same rule when lines move, and no path of the host
// goes into the ruleset.
type allowRule struct {
	Bridge string // "@vm_bridges" for every VM, or one VM's bridge in quotes
	Net    netip.Prefix
	Proto  string
	Ports  string // "22, 8000-8080"
	Text   string // the entry as infra.toml writes it, normalized
	Who    string // "every VM" or the VM's name
}

// openings are the vm:NAME entries of the VMs' allow lists, as the
// elements of the sets that let them through: by source bridge,
// destination address, protocol and ports.
type openings struct {
	Ports  []string // "br-web" . 10.6.0.2 . tcp . 6379
	Protos []string // "br-web" . 10.6.0.2 . icmp
	All    []string // "br-web" . 10.6.0.2
}

func openingsOf(vms []config.VM) openings {
	var o openings
	for _, vm := range vms {
		for _, a := range vm.Allow {
			if a.VM == "" {
				continue
			}
			head := fmt.Sprintf("%q . %s", vm.Bridge, a.Net.Addr())
			switch {
			case a.Proto == "":
				o.All = append(o.All, head)
			case len(a.Ports) == 0:
				o.Protos = append(o.Protos, head+" . "+a.Proto)
			default:
				for _, r := range a.Ports {
					o.Ports = append(o.Ports, fmt.Sprintf("%s . %s . %s", head, a.Proto, r))
				}
			}
		}
	}
	return o
}

// hostOpeningsOf are the entries of the VMs' allow lists that name their
// own gateway: ports of the host each VM may reach there, as elements of
// the set the input chain accepts (by bridge, gateway, protocol and
// ports). Config requires a protocol and ports of them.
func hostOpeningsOf(vms []config.VM) []string {
	var out []string
	for _, vm := range vms {
		for _, a := range vm.Allow {
			if !a.Gateway {
				continue
			}
			for _, r := range a.Ports {
				out = append(out, fmt.Sprintf("%q . %s . %s . %s", vm.Bridge, a.Net.Addr(), a.Proto, r))
			}
		}
	}
	return out
}

// Drops are counted per VM, for its metrics (package metrics): two named
// counters each, drop_from_NAME (what it sent) and drop_to_NAME (what was
// sent to it), reached through two maps keyed by its bridge, so the rules
// stay as few whatever the number of VMs. Each rule that drops what a VM
// sends or receives has a rule just before it with the same match that
// counts: the drop itself stays a rule of its own, so a map that lacked a
// bridge (a lookup that fails ends a rule) would skip a count, never a
// drop.
const counted = "counted per VM: what the next rule drops"

// CounterFrom and CounterTo name the counters of what the firewall dropped
// of what VM name sent, and of what was sent to it.
func CounterFrom(name string) string { return "drop_from_" + name }
func CounterTo(name string) string   { return "drop_to_" + name }

// published is one published port as the template writes it.
type published struct {
	Key, To string // "tcp . 80" : "10.5.0.2 . 80"
}

func publishedOf(vms []config.VM) (pubs []published, from []string) {
	for _, vm := range vms {
		for _, p := range vm.Publish {
			key := fmt.Sprintf("%s . %d", p.Proto, p.HostPort)
			pubs = append(pubs, published{key, fmt.Sprintf("%s . %d", vm.Addr, p.VMPort)})
			srcs := p.From
			if len(srcs) == 0 {
				srcs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
			}
			for _, s := range srcs {
				from = append(from, key+" . "+s.String())
			}
		}
	}
	return pubs, from
}

// Render is the table for the model, with uplinkNets the networks of its
// uplink.
func Render(in *config.Infra, uplinkNets []netip.Prefix) string {
	var allow []allowRule
	add := func(bridge, who string, list []config.Allow) {
		for _, a := range list {
			if a.VM != "" || a.Gateway {
				continue // openings to VMs and to the host are sets, not rules on the uplink
			}
			allow = append(allow, allowRule{bridge, a.Net, a.Proto, a.PortList(", "), a.String(), who})
		}
	}
	add("@vm_bridges", "every VM", in.Host.Allow)
	for _, vm := range in.VMs {
		add(`"`+vm.Bridge+`"`, vm.Name, vm.Allow)
	}
	pubs, from := publishedOf(in.VMs)
	data := struct {
		Table, Uplink, Tailscale, Hash  string
		TailscaleRange, TailscaleRange6 string
		AllowVMToTailnet                bool
		VMs                             []config.VM
		Blocked                         []netip.Prefix
		Allow                           []allowRule
		Openings                        openings
		Published                       []published
		PublishedFrom                   []string
		HostOpenings                    []string
		CountFrom, Counted              string
	}{Table, in.Host.Uplink, config.Tailscale, "", config.TailscaleRange.String(), config.TailscaleRange6.String(),
		in.Host.Tailscale.AllowVMToTailnet, in.VMs, merge(append(slices.Clone(Blocked), uplinkNets...)), allow,
		openingsOf(in.VMs), pubs, from, hostOpeningsOf(in.VMs),
		`counter name iifname map @vm_drops_from comment "` + counted + `"`, counted}
	// Render once without the hash, hash that, and render again with it: the
	// hash in the comment lets plan see whether the loaded table is current.
	sum := sha256.Sum256([]byte(execute(data)))
	data.Hash = "sha256:" + hex.EncodeToString(sum[:8])
	return execute(data)
}

// execute runs the template. Its text is fixed and its data plain values,
// so an error is a bug in this file (every test renders it): it panics
// rather than let a partial table be loaded.
func execute(data any) string {
	var b bytes.Buffer
	if err := ruleset.Execute(&b, data); err != nil {
		panic("firewall: rendering the ruleset: " + err.Error())
	}
	return b.String()
}

// merge sorts prefixes and drops those inside another: an nftables
// interval set refuses overlapping elements.
func merge(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// Replace loads ruleset as one transaction: the table is created if it is
// missing, deleted and defined again, so there is never a moment with a half
// table and nothing outside it changes. With Host set, it also records the
// ruleset in Host's run directory as the table the watcher keeps (see
// Watcher), under the lock the watcher takes, so the watcher never takes
// this change for an edit.
type Replace struct {
	Ruleset string
	Why     string   // "create", "update", "repair (edited by hand)"
	Changes []string // what differs, as State.Changes says
	Host    *config.Host
}

func (r *Replace) String() string {
	s := fmt.Sprintf("nft -f microvm.nft  # %s table %s %s", r.Why, Family, Table)
	if len(r.Changes) > 0 {
		const show = 3
		s += ": " + strings.Join(r.Changes[:min(show, len(r.Changes))], "; ")
		if len(r.Changes) > show {
			s += fmt.Sprintf("; and %d more", len(r.Changes)-show)
		}
	}
	return s + " (plan -v shows it)"
}

func (r *Replace) Apply() error {
	if r.Host == nil {
		return load(r.Ruleset)
	}
	unlock, err := lockRecord(*r.Host)
	if err != nil {
		return err
	}
	defer unlock()
	if err := load(r.Ruleset); err != nil {
		return err
	}
	return writeRecord(*r.Host, r.Ruleset)
}

// load replaces the table with ruleset in one transaction.
func load(ruleset string) error {
	return nft(fmt.Sprintf("table %s %s {}\ndelete table %s %s\n%s", Family, Table, Family, Table, ruleset), "-f", "-")
}

// Delete removes the table: used when the program is asked to remove the
// whole host part.
type Delete struct{}

func (Delete) String() string { return fmt.Sprintf("nft delete table %s %s", Family, Table) }
func (Delete) Apply() error {
	return nft(fmt.Sprintf("table %s %s {}\ndelete table %s %s\n", Family, Table, Family, Table), "-f", "-")
}

// observed is what Diff reads of the host: the loaded table (nil when
// there is none), the wanted one as nft reads it back (only read when
// there is a table to compare it with), and other firewalls that would
// drop VM traffic.
type observed struct {
	loaded, wanted *State
	conflicts      []string
	listening      map[string]bool // the host's own ports, as "tcp 22"
}

// Diff returns the action that makes the loaded table match the model, or
// nothing when it already does, and warns of other firewalls in the way.
// It compares the two tables rule by rule (see State), so any edit by hand
// shows, and says what changed.
func Diff(in *config.Infra) (action.Diff, error) {
	ruleset := Ruleset(in)
	o := observed{conflicts: Conflicts(), listening: listening()}
	var err error
	if o.loaded, err = Current(); err != nil {
		return action.Diff{}, err
	}
	if o.loaded != nil {
		if o.wanted, err = wanted(ruleset); err != nil {
			return action.Diff{}, err
		}
	}
	return diff(in, ruleset, o), nil
}

// diff compares ruleset, the table for in, with what was read of the host.
func diff(in *config.Infra, ruleset string, o observed) action.Diff {
	d := action.Diff{Warnings: append(o.conflicts, publishWarnings(in, o.listening)...), Notes: publishNotes(in)}
	if o.loaded == nil {
		d.Setup = []action.Action{&Replace{Ruleset: ruleset, Why: "create", Host: &in.Host}}
		return d
	}
	changes := o.loaded.Changes(o.wanted)
	if len(changes) == 0 {
		return d
	}
	why := "update"
	if o.loaded.Hash == summarize(ruleset).Hash {
		why = "repair (edited by hand)"
	}
	d.Setup = []action.Action{&Replace{Ruleset: ruleset, Why: why, Changes: changes, Host: &in.Host}}
	return d
}

// summary is what the rendered ruleset says of itself: the hash in its
// comment, and how many rules and set elements it has.
type summary struct {
	Hash     string
	Rules    int
	Elements int
}

func summarize(ruleset string) summary {
	var s summary
	if i := strings.Index(ruleset, "(sha256:"); i >= 0 {
		s.Hash = ruleset[i+1 : i+1+len("sha256:")+16]
	}
	inChain := false
	for _, line := range strings.Split(ruleset, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "chain "):
			inChain = true
		case line == "}":
			inChain = false
		case strings.HasPrefix(line, "elements = {"):
			s.Elements += strings.Count(line, ",") + 1
		case inChain && line != "" && !strings.HasPrefix(line, "type "):
			s.Rules++
		}
	}
	return s
}

// Current reads the loaded table in canonical form, or returns nil when
// there is none. The hash comes from the text listing, as nft 1.0.6's JSON
// leaves out the table's comment.
func Current() (*State, error) {
	s, err := loaded()
	if err != nil || s == nil {
		return nil, err
	}
	text, err := exec.Command("nft", "list", "table", Family, Table).Output()
	if err != nil {
		return nil, fmt.Errorf("reading nftables table %s %s: %w", Family, Table, cmdErr(err))
	}
	if i := bytes.Index(text, []byte("(sha256:")); i >= 0 {
		if j := bytes.IndexByte(text[i:], ')'); j > 0 {
			s.Hash = string(text[i+1 : i+j])
		}
	}
	return s, nil
}

func nft(stdin string, args ...string) error {
	cmd := exec.Command("nft", args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft %s: %s: %w", strings.Join(args, " "), strings.TrimSpace(string(out)), err)
	}
	return nil
}

func cmdErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return fmt.Errorf("%s", strings.TrimSpace(string(ee.Stderr)))
	}
	if err, ok := err.(*exec.Error); ok && err.Err == exec.ErrNotFound {
		return fmt.Errorf("the nft command is not installed; install the nftables package")
	}
	return err
}
