package config

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// A fleet file declares its hosts, and may pin a VM to one (docs/fleet.md):
//
//	[fleet.host.hv1]
//	address = "192.168.1.11"   # where the admin reaches it over SSH
//	memory = 32768             # MiB of guest memory it may hold
//	uplink = "enp3s0"          # any key of fleetOverrides, over [host]
//
//	[vm.web]
//	host = "hv1"               # without host, fleet push places the VM
//
// Each host applies its part: the file with [fleet.part] added by its
// daemon, which names the host and the VMs placed on it. With a part, the
// model is that host's: its keys over [host], and only its VMs, after
// everything (names, subnets) was checked fleet-wide.
//
//	[fleet.part]
//	host = "hv1"
//	vms = ["web"]
//	revision = 12              # etcd's revision of the file the part is of
//	etcd = ["https://192.168.1.11:2379"]   # how local commands reach the fleet
//	certs = "/etc/microvm/fleet"           # with this host's certificate

// FleetHost is one [fleet.host.NAME] table.
type FleetHost struct {
	Name      string
	Address   string // IP address or DNS name, for SSH
	MemoryMiB int    // the guest memory placement may give it
}

// Part is the [fleet.part] table: which host's part of the fleet file this
// is. Host is "" in a file that is not a part.
type Part struct {
	Host     string
	VMs      []string
	Revision int64
	Etcd     []string // the endpoints the daemon reads the fleet from
	Certs    string   // the directory of its certificates
}

var (
	fleetHostKeys = []string{"address", "memory", "uplink", "state_dir", "run_dir", "storage", "zfs_dataset", "accel", "ipv6_prefix", "tailscale_socket"}
	partKeys      = []string{"host", "vms", "revision", "etcd", "certs"}
)

// IsFleet says the file declares hosts: it is pushed with fleet push, and
// a host applies its part of it, never the whole.
func (in *Infra) IsFleet() bool { return len(in.Fleet) > 0 }

// FleetHost returns the host called name.
func (in *Infra) FleetHost(name string) (*FleetHost, bool) {
	for i := range in.Fleet {
		if in.Fleet[i].Name == name {
			return &in.Fleet[i], true
		}
	}
	return nil, false
}

// WithPart returns the fleet file src with the part of host added: the
// file that host's daemon writes, and what Parse reads as its model.
func WithPart(src []byte, part Part) []byte {
	var b strings.Builder
	b.Write(src)
	if len(src) > 0 && src[len(src)-1] != '\n' {
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "\n# Written by microvm host --fleet: this host's part of the fleet's file at\n# etcd revision %d. Edit the fleet's file and run microvm fleet push instead.\n", part.Revision)
	fmt.Fprintf(&b, "[fleet.part]\nhost = %q\nvms = %s\nrevision = %d\n", part.Host, tomlList(part.VMs), part.Revision)
	if len(part.Etcd) > 0 {
		fmt.Fprintf(&b, "etcd = %s\ncerts = %q\n", tomlList(part.Etcd), part.Certs)
	}
	return []byte(b.String())
}

func tomlList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// decodeFleet stores an entry under [fleet].
func (p *parser) decodeFleet(e entry, unknown func(entry, int, string)) {
	switch {
	case len(e.path) == 2 && e.isTbl && (e.path[1] == "host" || e.path[1] == "part"):
	case e.path[1] == "part":
		p.sawPart = true
		p.put(p.part, e, 2, "[fleet.part]", partKeys, unknown)
	case e.path[1] != "host":
		unknown(e, 2, fmt.Sprintf("unknown table %q in [fleet]; a fleet file has [fleet.host.NAME] tables (and [fleet.part], which each host's daemon writes)", e.path[1]))
	case len(e.path) == 3:
		if !e.isTbl {
			unknown(e, 3, fmt.Sprintf("fleet.host.%s must be a table; write [fleet.host.%s] and its keys below it", e.path[2], e.path[2]))
			return
		}
		p.fleetHost(e)
	default:
		t := p.fleetHost(e)
		p.put(t.vals, e, 3, "[fleet.host."+t.name+"]", fleetHostKeys, unknown)
	}
}

// fleetHost returns the raw table of the host e is in, made at its first
// entry.
func (p *parser) fleetHost(e entry) *rawTable {
	name := e.path[2]
	for _, t := range p.hosts {
		if t.name == name {
			return t
		}
	}
	t := &rawTable{name: name, at: e.key, vals: map[string]*value{}}
	p.hosts = append(p.hosts, t)
	return t
}

// overlayPart reads [fleet.part] and, when it names a declared host, sets
// that host's keys over [host]: derive then makes the host's own model.
func (p *parser) overlayPart() {
	if !p.sawPart {
		return
	}
	part := &p.in.Part
	if v, ok := p.part["host"]; !ok {
		p.errorf(p.in.keys["fleet.part"], "[fleet.part] has no host; it is written by microvm host --fleet, with the host's name")
	} else if s, ok := p.str(v, "fleet.part.host"); ok {
		part.Host = s
	}
	if v, ok := p.part["vms"]; ok {
		if v.kind != unstable.Array {
			p.errorf(v.pos, "fleet.part.vms must be a list of VM names")
		} else {
			part.VMs = slices.Clone(v.list)
		}
	}
	if v, ok := p.part["revision"]; ok {
		if n, ok := v.asInt(); ok && n >= 0 {
			part.Revision = n
		} else {
			p.errorf(v.pos, "fleet.part.revision must be a whole number, etcd's revision of the file")
		}
	}
	if v, ok := p.part["etcd"]; ok {
		part.Etcd = slices.Clone(v.list)
	}
	if v, ok := p.part["certs"]; ok {
		part.Certs, _ = p.str(v, "fleet.part.certs")
	}
	for _, t := range p.hosts {
		if t.name != part.Host {
			continue
		}
		for k, v := range t.vals {
			switch k {
			case "address", "memory":
			case "tailscale_socket": // a host's tailscaled may listen elsewhere
				p.ts["socket"] = v
			default:
				p.host[k] = v
			}
		}
		return
	}
	if part.Host != "" {
		p.errorf(p.in.keys["fleet.part.host"], "fleet.part.host = %q is not declared; the file declares %s", part.Host, p.hostNames())
	}
}

func (p *parser) hostNames() string {
	var names []string
	for _, t := range p.hosts {
		names = append(names, "[fleet.host."+t.name+"]")
	}
	if len(names) == 0 {
		return "no [fleet.host.NAME] table"
	}
	return strings.Join(names, ", ")
}

// fleet reads the [fleet.host.NAME] tables into the model and checks each
// VM's host.
func (p *parser) fleet() {
	for _, t := range p.hosts {
		key := "fleet.host." + t.name
		if !isName(t.name) || len(t.name) > 63 {
			p.errorf(t.at, "host name %q is invalid; use lowercase letters, digits and '-', starting with a letter, e.g. \"hv1\"", t.name)
			continue
		}
		h := FleetHost{Name: t.name}
		if v, ok := t.vals["address"]; !ok {
			p.errorf(t.at, "[%s] has no address; add the address the admin reaches it at over SSH, e.g. address = \"192.168.1.11\"", key)
		} else if s, ok := p.str(v, key+".address"); ok {
			if _, err := netip.ParseAddr(s); err != nil && !isHostname(s) {
				p.errorf(v.pos, "%s.address = %q is neither an IP address nor a host name", key, s)
			}
			h.Address = s
		}
		if v, ok := t.vals["memory"]; !ok {
			p.errorf(t.at, "[%s] has no memory; add the MiB of guest memory its VMs may take together, e.g. memory = 32768", key)
		} else if n, ok := p.num(v, key+".memory"); ok {
			if n < 128 {
				p.errorf(v.pos, "%s.memory = %d is in MiB and below the smallest VM (128); e.g. memory = 32768 for 32 GiB", key, n)
			}
			h.MemoryMiB = n
		}
		p.in.Fleet = append(p.in.Fleet, h)
	}
	sort.Slice(p.in.Fleet, func(i, j int) bool { return p.in.Fleet[i].Name < p.in.Fleet[j].Name })
	for _, r := range p.vms {
		v, ok := r.vals["host"]
		if !ok {
			continue
		}
		s, ok := p.str(v, "vm."+r.name+".host")
		if !ok {
			continue
		}
		if _, found := p.in.FleetHost(s); !found {
			p.errorf(v.pos, "vm.%s.host = %q is not declared; the file declares %s", r.name, s, p.hostNames())
		}
		if vm, found := p.in.VM(r.name); found {
			vm.Host = s
		}
	}
}

// keepPart leaves in the model only the VMs of the part, after every
// fleet-wide check ran on all of them.
func (p *parser) keepPart() {
	part := p.in.Part
	if part.Host == "" {
		return
	}
	for _, name := range part.VMs {
		if _, ok := p.in.VM(name); !ok {
			p.errorf(p.in.keys["fleet.part.vms"], "fleet.part.vms names %q, which the file does not declare", name)
		}
	}
	kept := p.in.VMs[:0]
	for _, vm := range p.in.VMs {
		if slices.Contains(part.VMs, vm.Name) {
			kept = append(kept, vm)
		}
	}
	p.in.VMs = kept
	for _, vm := range p.in.VMs {
		for _, a := range vm.Allow {
			if a.VM != "" && !slices.Contains(part.VMs, a.VM) {
				p.errorf(p.posOf(a.At), "vm.%s.allow: vm:%s does not run on %s; an opening joins VMs on the same host: pin both with host = %q", vm.Name, a.VM, part.Host, part.Host)
			}
		}
	}
}

// isHostname: letters, digits, '-' and '.', as DNS names are written.
func isHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	_, bad := badRune(s, "-.")
	return !bad && !strings.HasPrefix(s, "-") && !strings.HasPrefix(s, ".")
}
