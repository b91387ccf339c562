// Package config reads infra.toml, validates it, and derives the model every
// other package works from: for each VM its bridge, TAP, subnet, gateway,
// address, MAC and paths. Nothing outside this package derives a name or an
// address.
package config

import (
	"crypto/sha256"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Defaults for keys that infra.toml may leave out.
const (
	DefaultStateDir   = "/var/lib/microvms"
	DefaultRunDir     = "/run/microvm"
	DefaultUser       = "microvm"
	DefaultVCPU       = 1
	DefaultMemoryMiB  = 512
	DefaultHypervisor = CloudHypervisor
	DefaultImage      = "debian"
	DefaultDNS        = "1.1.1.1"
	DefaultAccel      = KVM

	// Storage: plain directories unless the file asks for ZFS, which
	// needs a pool the user made (the design's step 2).
	DefaultStorage       = StorageDir
	DefaultZFSDataset    = "rpool/microvms" // the design's dataset for VM data
	DefaultKeepSnapshots = 5                // automatic snapshots kept per VM
	MaxKeepSnapshots     = 1000

	// Table is the one nftables table the program owns.
	Table = "microvm"
	// LinkGroup is the link group (ip link ... group) of every bridge the
	// program creates. The kernel sets it in the same request that makes
	// the bridge, so a bridge whose alias could not be set yet (an apply
	// interrupted in between) is still known as the program's.
	LinkGroup = 0x6d766d // "mvm"
	// RouteTable is the routing table the program owns (package hostnet's
	// second layer of isolation): a blackhole route for every VM subnet.
	RouteTable = 0x6d766d
	// RouteProto marks the program's policy routing rules and routes
	// (ip rule ... protocol, ip route ... proto): 109, "m", is assigned to
	// no routing daemon in iproute2's rt_protos.
	RouteProto = 0x6d
	// RulePrefOpenings and RulePrefIsolation are the priorities of the
	// program's ip rules: after the local table's (0), before tailscaled's
	// (5210-5270), so that no subnet route a tailnet peer advertises
	// (tailscaled's table 52) takes a VM subnet from them.
	RulePrefOpenings  = 5100
	RulePrefIsolation = 5101
	// Tailscale is the interface tailscaled creates.
	Tailscale = "tailscale0"
	// MaxNameLen keeps "br-" + name within the kernel's 15-byte limit.
	MaxNameLen = 15 - len("br-")
)

// Hypervisor names the VMM a VM runs under, as infra.toml writes it.
type Hypervisor string

// The hypervisors the program can drive. Package vmm has the backend of
// each in its registry (vmm.Hypervisor), and a test there keeps it equal to
// controlSockets; config knows only their names and control sockets.
const (
	CloudHypervisor Hypervisor = "cloud-hypervisor"
	QEMU            Hypervisor = "qemu"
)

// controlSockets names each hypervisor's control socket in the VM's vmm
// directory (VM.ControlSocket): Cloud Hypervisor's REST API, QEMU's QMP.
var controlSockets = map[Hypervisor]string{CloudHypervisor: "api.sock", QEMU: "qmp.sock"}

// Hypervisors are the hypervisors infra.toml may name, sorted.
var Hypervisors = slices.Sorted(maps.Keys(controlSockets))

// Storage is the way VM data is kept (package storage has a backend for
// each).
type Storage string

const (
	StorageDir Storage = "dir" // plain directories under state_dir
	StorageZFS Storage = "zfs" // a dataset per VM under zfs_dataset, mounted at state_dir, with snapshots
)

// Storages are the ways VM data can be kept.
var Storages = []Storage{StorageDir, StorageZFS}

// ReservedNames are the directories of state_dir that are not VMs, with
// what they hold. No VM may be called by them: its etc and var, or its ZFS
// dataset, would land in theirs.
var ReservedNames = map[string]string{"images": "the shared images", "admin": "the admin SSH key"}

// Accel is the way QEMU runs a guest's CPU.
type Accel string

const (
	KVM Accel = "kvm" // real hosts
	TCG Accel = "tcg" // software emulation, slow, where /dev/kvm does not work, such as CI machines
)

// Accels are the ways QEMU can run a guest.
var Accels = []Accel{KVM, TCG}

// TailscaleRange is the CGNAT range tailnet addresses come from; VM subnets
// must not overlap it or tailnet traffic would be routed into a VM.
var TailscaleRange = netip.MustParsePrefix("100.64.0.0/10")

// Infra is the validated model of one infra.toml.
type Infra struct {
	File   string
	Host   Host
	VMs    []VM        // sorted by name
	Images []Image     // the [image.NAME] tables, sorted by name
	Fleet  []FleetHost // the [fleet.host.NAME] tables, sorted by name (fleet.go)
	Part   Part        // [fleet.part]: the host whose part of the fleet this model is

	keys map[string]Pos // dotted key -> where it is written
}

// Host is the [host] table with defaults filled in.
type Host struct {
	Uplink   string // interface that reaches the internet (NAT goes out here)
	StateDir string // persistent VM data
	RunDir   string // sockets, pid files, console logs
	User     string // prefix of the VM users: the VMM of vm1 runs as USER-vm1 (VM.User)
	Accel    Accel  // for QEMU

	Storage       Storage
	ZFSDataset    string // with storage "zfs": the parent dataset, mounted at StateDir
	KeepSnapshots int    // with storage "zfs": automatic snapshots kept per VM; 0 takes none

	Tailscale TailscaleSettings // [host.tailscale]: subnet routes for the VM networks
	Metrics   MetricsSettings   // [host.metrics]: the Prometheus endpoint of the host daemon

	// Allow lists what every VM may reach through the uplink beyond the
	// internet (by default not the LAN, private ranges, CGNAT, link-local
	// or cloud metadata); VM.Allow adds to it per VM.
	Allow []Allow

	// IPv6 (ipv6.go): every VM has a /64 of IPv6Prefix beside its IPv4
	// subnet, unless IPv6 is false. NAT66 is true when the prefix is a
	// ULA (the default, derived from the uplink and state_dir): VMs then
	// reach the internet through NAT66, as through NAT for IPv4.
	IPv6       bool
	IPv6Prefix netip.Prefix
	NAT66      bool

	// Egress lists the only names every VM reaches on the internet
	// (egress.go); VM.Egress adds to it per VM. Empty: the whole internet.
	Egress []Egress
}

// VM is one [vm.NAME] table with every derived value.
type VM struct {
	Name       string
	Subnet     netip.Prefix
	Gateway    netip.Addr // .1, on the host's bridge
	Addr       netip.Addr // .2, the guest's eth0
	Bridge     string     // br-NAME
	TAP        string     // vm-NAME
	MAC        net.HardwareAddr
	VCPU       int
	MemoryMiB  int
	Hypervisor Hypervisor
	Image      string
	DNS        string
	SSHKeys    []string // authorized for root, beside the host's admin key
	Autostart  bool     // started by apply (and at boot); default true
	Allow      []Allow  // what this VM may reach beyond the internet, besides Host.Allow; vm:NAME entries open other VMs
	User       string   // the user its VMM runs as, with a group of the same name: USER-NAME
	Host       string   // in a fleet, the host it is pinned to ("": placed by fleet push)

	// IPv6 (ipv6.go), all invalid when the host has ipv6 = false.
	Subnet6    netip.Prefix // a /64 of Host.IPv6Prefix
	Gateway6   netip.Addr   // ::1, on the host's bridge
	Addr6      netip.Addr   // ::2, the guest's eth0
	LinkLocal6 netip.Addr   // fe80:: from its MAC (EUI-64), which the guest's kernel gives eth0

	// Egress is Host.Egress and the VM's own egress list: when not empty,
	// the only names it reaches on the internet (egress.go).
	Egress []Egress

	// What runs in it (services.go, files.go, publish.go, writable.go).
	Services        []string  // units enabled in its /etc, with their suffix
	DisableServices []string  // units disabled there
	RunOnce         []string  // shell commands run once per version of the list
	Files           []File    // written into its /etc and /var at every start
	Publish         []Publish // ports of the host's uplink forwarded to it
	ImageWritable   bool      // an overlay of its own over the image
	Secrets         []Secret  // given to it in memory only (secrets.go)
	Volumes         []Volume  // block devices of its own (volumes.go)
	Limits          Limits    // what it may take: memory, processes, CPU, I/O, disk (limits.go)

	StateDir string // STATE_DIR/NAME
	EtcDir   string // STATE_DIR/NAME/etc, the guest's /etc
	VarDir   string // STATE_DIR/NAME/var, the guest's /var
	RunDir   string // RUN_DIR/NAME
}

// Alias marks links the program created, so that a later apply removes only
// its own links when a VM leaves the file.
func (vm *VM) Alias() string { return "microvm:" + vm.Name }

// AliasPrefix is the start of every alias the program sets.
const AliasPrefix = "microvm:"

// Pos returns "file:line:col" for a dotted key such as "host.uplink", or just
// the file name if the key was not written.
func (in *Infra) Pos(key string) string {
	if p, ok := in.keys[key]; ok {
		return fmt.Sprintf("%s:%d:%d", in.File, p.Line, p.Col)
	}
	return in.File
}

// Errorf is a problem found in the model after Parse (by a package that
// knows more than config, as vmm knows its hypervisors), at the first of
// keys that is written in the file, or at the file if none is.
func (in *Infra) Errorf(keys []string, format string, args ...any) *Error {
	e := &Error{File: in.File, Msg: fmt.Sprintf(format, args...)}
	for _, k := range keys {
		if p, ok := in.keys[k]; ok {
			e.Pos = p
			break
		}
	}
	return e
}

// VM returns the VM called name.
func (in *Infra) VM(name string) (*VM, bool) {
	for i := range in.VMs {
		if in.VMs[i].Name == name {
			return &in.VMs[i], true
		}
	}
	return nil, false
}

// Load reads and validates the file at path.
func Load(path string) (*Infra, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, src)
}

// Parse validates src (named file in messages) and derives the model. All
// problems are reported together, as an ErrorList, in file order.
func Parse(file string, src []byte) (*Infra, error) {
	entries, err := readTOML(src)
	if err != nil {
		return nil, ErrorList{withFile(err, file)}
	}
	p := &parser{file: file, in: &Infra{File: file, keys: map[string]Pos{}}}
	p.decode(entries)
	if len(p.errs) == 0 {
		p.derive()
	}
	if len(p.errs) > 0 {
		sort.SliceStable(p.errs, func(i, j int) bool {
			a, b := p.errs[i].Pos, p.errs[j].Pos
			return a.Line < b.Line || a.Line == b.Line && a.Col < b.Col
		})
		return nil, p.errs
	}
	return p.in, nil
}

// rawTable is a [vm.NAME] or [image.NAME] table as the file says it,
// before defaults and derivation.
type rawTable struct {
	name string
	at   Pos
	vals map[string]*value
	subs map[string]*rawEntries // [KIND.NAME.files], .secrets, .volumes
}

type parser struct {
	file     string
	in       *Infra
	errs     ErrorList
	host     map[string]*value
	ts       map[string]*value // [host.tailscale]
	mt       map[string]*value // [host.metrics]
	defaults map[string]*value
	vms      []*rawTable
	imgs     []*rawTable
	hosts    []*rawTable       // [fleet.host.NAME]
	part     map[string]*value // [fleet.part]
	sawPart  bool
}

func (p *parser) errorf(at Pos, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Pos: at, Msg: fmt.Sprintf(format, args...)})
}

var (
	hostKeys     = []string{"uplink", "state_dir", "run_dir", "user", "accel", "storage", "zfs_dataset", "keep_snapshots", "allow", "ipv6", "ipv6_prefix", "egress", "tailscale", "metrics"}
	defaultsKeys = []string{"vcpu", "memory", "hypervisor", "image", "dns", "ssh_keys", "autostart", "disk", "cpu_max", "io_weight"}
	vmKeys       = []string{"subnet", "vcpu", "memory", "hypervisor", "image", "dns", "ssh_keys", "autostart", "allow",
		"services", "disable_services", "run_once", "files", "publish", "image_writable", "egress", "disk", "cpu_max", "io_weight", "secrets", "volumes", "host"}
	topKeys = []string{"host", "defaults", "vm", "image", "fleet"}
)

// decode sorts entries into host, defaults and VMs, rejecting unknown keys
// (each unknown table or key once, at its first use).
func (p *parser) decode(entries []entry) {
	p.host = map[string]*value{}
	p.ts = map[string]*value{}
	p.mt = map[string]*value{}
	p.defaults = map[string]*value{}
	p.part = map[string]*value{}
	byName := map[string]*rawTable{}
	imgByName := map[string]*rawTable{}
	reported := map[string]bool{}
	unknown := func(e entry, depth int, msg string) {
		key := strings.Join(e.path[:depth], ".")
		if !reported[key] {
			reported[key] = true
			p.errorf(e.key, "%s", msg)
		}
	}
	for _, e := range entries {
		p.in.keys[strings.Join(e.path, ".")] = e.key
		top := e.path[0]
		switch {
		case !slices.Contains(topKeys, top):
			unknown(e, 1, fmt.Sprintf("unknown table or key %q; infra.toml has the tables [host], [defaults], [vm.NAME], [image.NAME] and [fleet.host.NAME]%s", top, suggest(top, topKeys)))
		case len(e.path) == 1:
			if !e.isTbl {
				unknown(e, 1, fmt.Sprintf("%s must be a table, e.g. [%s]", top, top))
			}
		case top == "host" && (e.path[1] == "tailscale" || e.path[1] == "metrics"):
			// The nested tables of the file: [host.tailscale], [host.metrics].
			sub := e.path[1]
			if len(e.path) == 2 {
				if !e.isTbl {
					unknown(e, 2, fmt.Sprintf("%s in [host] must be a table; write [host.%s] and its keys below it", sub, sub))
				}
				continue
			}
			tbl, keys := p.ts, tailscaleKeys
			if sub == "metrics" {
				tbl, keys = p.mt, metricsKeys
			}
			p.put(tbl, e, 2, "[host."+sub+"]", keys, unknown)
		case top == "host":
			p.put(p.host, e, 1, "[host]", hostKeys, unknown)
		case top == "fleet":
			p.decodeFleet(e, unknown)
		case top == "defaults":
			p.put(p.defaults, e, 1, "[defaults]", defaultsKeys, unknown)
		case top == "image":
			p.named(e, imgByName, &p.imgs, imageKeys, unknown)
		default: // vm
			p.named(e, byName, &p.vms, vmKeys, unknown)
		}
	}
}

// named stores entry e of a table [KIND.NAME] (a VM or an image), its
// files table included, making the table at its first entry.
func (p *parser) named(e entry, byName map[string]*rawTable, list *[]*rawTable, keys []string, unknown func(entry, int, string)) {
	kind, name := e.path[0], e.path[1]
	t := byName[name]
	if t == nil {
		t = &rawTable{name: name, at: e.key, vals: map[string]*value{}, subs: map[string]*rawEntries{}}
		byName[name] = t
		*list = append(*list, t)
	}
	table := "[" + kind + "." + name + "]"
	switch {
	case len(e.path) == 2:
		if !e.isTbl {
			unknown(e, 2, fmt.Sprintf("%s.%s must be a table; write %s and its keys below it", kind, name, table))
		}
	case e.path[2] == "files" || kind == "vm" && (e.path[2] == "secrets" || e.path[2] == "volumes"):
		p.putEntry(t.subs, e, 2, table, unknown)
	default:
		p.put(t.vals, e, 2, table, keys, unknown)
	}
}

// put stores the value of e, whose key is e.path[i] in table, after
// checking the key.
func (p *parser) put(m map[string]*value, e entry, i int, table string, known []string, unknown func(entry, int, string)) {
	k := e.path[i]
	switch {
	case !slices.Contains(known, k):
		unknown(e, i+1, fmt.Sprintf("unknown key %q in %s; known keys are %s%s", k, table, strings.Join(known, ", "), suggest(k, known)))
	case len(e.path) > i+1 || e.isTbl:
		unknown(e, i+1, fmt.Sprintf("%s in %s must be a value, not a table", k, table))
	default:
		m[k] = e.val
	}
}

// str, num: typed access with an error that names the expected type.
func (p *parser) str(v *value, key string) (string, bool) {
	if v.kind != unstable.String {
		p.errorf(v.pos, "%s must be a string in quotes, not %s", key, kindName(v.kind))
		return "", false
	}
	return v.str, true
}

func (p *parser) num(v *value, key string) (int, bool) {
	n, ok := v.asInt()
	if !ok {
		if v.kind == unstable.Integer {
			p.errorf(v.pos, "%s: %s is not a valid integer", key, v.str)
		} else {
			p.errorf(v.pos, "%s must be a whole number, not %s", key, kindName(v.kind))
		}
		return 0, false
	}
	if n > 1<<31 || n < -1<<31 {
		p.errorf(v.pos, "%s: %s is out of range", key, v.str)
		return 0, false
	}
	return int(n), true
}

// derive fills in defaults, validates values and computes the model.
func (p *parser) derive() {
	h := &p.in.Host
	p.overlayPart()
	h.Uplink = p.hostString("uplink", "", validIfName)
	if h.Uplink == "" && p.host["uplink"] == nil {
		p.errorf(p.in.keys["host"], "[host] uplink is missing; set it to the interface that reaches the internet, e.g. uplink = \"eth0\" (see `ip route show default`)")
	}
	h.StateDir = p.hostString("state_dir", DefaultStateDir, validDir)
	h.RunDir = p.hostString("run_dir", DefaultRunDir, validDir)
	h.User = p.hostString("user", DefaultUser, validUser)
	h.Accel = Accel(p.hostString("accel", string(DefaultAccel), func(s string) string {
		if !slices.Contains(Accels, Accel(s)) {
			return "is not supported; use \"kvm\" (real hosts) or \"tcg\" (software emulation, where /dev/kvm does not work)" + suggest(s, Accels)
		}
		return ""
	}))
	if h.StateDir != "" && h.StateDir == h.RunDir {
		p.errorf(p.in.keys["host.run_dir"], "run_dir must differ from state_dir (%s)", h.StateDir)
	}
	p.storage(h)
	p.tailscale(h)
	p.metrics(h)
	h.Allow = p.allowList(p.host["allow"], "host.allow")
	p.hostIPv6(h)
	h.Egress = p.egressList(p.host["egress"], "host.egress")

	def := VM{VCPU: DefaultVCPU, MemoryMiB: DefaultMemoryMiB, Hypervisor: DefaultHypervisor, Image: DefaultImage, DNS: DefaultDNS, Autostart: true}
	p.resources(&def, p.defaults, "defaults")
	p.dnsFamily(&def, p.defaults, "defaults")
	p.limits(&def, p.defaults, "defaults", h.Accel)

	if len(p.vms) == 0 {
		p.errorf(Pos{1, 1}, "no VMs are declared; add one, e.g. [vm.vm1] with subnet = \"10.1.0.0/24\" (to remove the VMs and what apply made instead, run microvm teardown)")
	}
	used := map[netip.Prefix]string{}
	for _, r := range p.vms {
		if s, ok := r.vals["subnet"]; ok {
			if pfx, err := netip.ParsePrefix(s.str); err == nil {
				used[pfx.Masked()] = r.name
			}
		}
	}
	macs := map[string]string{}
	for _, r := range p.vms {
		vm := def
		vm.Name = r.name
		key := "vm." + r.name
		if !p.validName(r) {
			continue
		}
		p.resources(&vm, r.vals, key)
		p.dnsFamily(&vm, r.vals, key)
		p.limits(&vm, r.vals, key, h.Accel)
		s, ok := r.vals["subnet"]
		if !ok {
			p.errorf(r.at, "[vm.%s] has no subnet; add subnet = %q", r.name, nextFree(used))
			continue
		}
		pfx, ok := p.subnet(s, key+".subnet")
		if !ok {
			continue
		}
		vm.Subnet = pfx
		vm.Gateway = pfx.Addr().Next()
		vm.Addr = vm.Gateway.Next()
		vm.Bridge = "br-" + r.name
		vm.TAP = "vm-" + r.name
		vm.MAC = macFor(r.name)
		vm.User = h.VMUser(r.name)
		vm.Allow = p.allowList(r.vals["allow"], key+".allow")
		h.deriveIPv6(&vm)
		vm.Egress = append(slices.Clone(h.Egress), p.egressList(r.vals["egress"], key+".egress")...)
		p.services(&vm, r.vals, key)
		vm.Files = p.files(r.subs["files"], key+".files", vmFile)
		vm.Secrets = p.secrets(r.subs["secrets"], key+".secrets")
		vm.Volumes = p.volumes(r.subs["volumes"], key+".volumes")
		vm.Publish = p.publishList(r.vals["publish"], key+".publish")
		p.writable(&vm, r.vals, key)
		if other, dup := macs[vm.MAC.String()]; dup {
			p.errorf(r.at, "vm.%s and vm.%s derive the same MAC address %s; rename one of them", other, r.name, vm.MAC)
		}
		macs[vm.MAC.String()] = r.name
		vm.setPaths(*h)
		p.in.VMs = append(p.in.VMs, vm)
	}
	p.overlaps()
	p.ipv6Subnets()
	p.ipv6Entries()
	p.socketPaths()
	sort.Slice(p.in.VMs, func(i, j int) bool { return p.in.VMs[i].Name < p.in.VMs[j].Name })
	p.fleet()
	p.openings()
	p.published()
	p.images()
	p.keepPart()
}

func (p *parser) hostString(k, def string, check func(string) string) string {
	v, ok := p.host[k]
	if !ok {
		return def
	}
	s, ok := p.str(v, k)
	if !ok {
		return ""
	}
	if msg := check(s); msg != "" {
		p.errorf(v.pos, "%s: %q %s", k, s, msg)
		return ""
	}
	return s
}

func (p *parser) validName(r *rawTable) bool {
	n := r.name
	switch {
	case n == "":
		p.errorf(r.at, "a VM name cannot be empty; use lowercase letters and digits, e.g. [vm.web]")
	case len(n) > MaxNameLen:
		p.errorf(r.at, "VM name %q is %d characters; at most %d fit the interface names it derives (br-%s is over Linux's 15 bytes); use a shorter name such as %q", n, len(n), MaxNameLen, n, n[:MaxNameLen])
	case !isName(n):
		p.errorf(r.at, "VM name %q is invalid; use lowercase letters, digits and '-', starting with a letter, e.g. %q", n, fixName(n))
	case ReservedNames[n] != "":
		p.errorf(r.at, "VM name %q is reserved: STATE_DIR/%s holds %s; choose another name", n, n, ReservedNames[n])
	default:
		return true
	}
	return false
}

// storage reads storage, zfs_dataset and keep_snapshots. The last two mean
// nothing with plain directories, so they are refused there: a file that
// names a dataset but forgot storage = "zfs" would otherwise run without
// the snapshots its author counts on.
func (p *parser) storage(h *Host) {
	h.Storage = Storage(p.hostString("storage", string(DefaultStorage), func(s string) string {
		if !slices.Contains(Storages, Storage(s)) {
			return "is not supported; use \"dir\" (plain directories under state_dir) or \"zfs\" (a dataset per VM, with snapshots)" + suggest(s, Storages)
		}
		return ""
	}))
	h.ZFSDataset = p.hostString("zfs_dataset", DefaultZFSDataset, validDataset)
	h.KeepSnapshots = DefaultKeepSnapshots
	if v, ok := p.host["keep_snapshots"]; ok {
		if n, ok := p.num(v, "keep_snapshots"); ok {
			if n < 0 || n > MaxKeepSnapshots {
				p.errorf(v.pos, "keep_snapshots = %d is out of range; it is how many automatic snapshots each VM keeps, 0 to %d (0 takes none)", n, MaxKeepSnapshots)
			}
			h.KeepSnapshots = n
		}
	}
	if h.Storage == StorageDir {
		for _, k := range []string{"zfs_dataset", "keep_snapshots"} {
			if v, ok := p.host[k]; ok {
				p.errorf(v.pos, "%s is only used with storage = \"zfs\"; add storage = \"zfs\" to [host], or remove %s", k, k)
			}
		}
	}
}

// validDataset checks a ZFS dataset name the way zfs does, and requires it
// to be inside a pool (POOL/NAME): the program creates and mounts this
// dataset, and never changes a pool's root dataset.
func validDataset(s string) string {
	parts := strings.Split(s, "/")
	if strings.HasPrefix(s, "/") {
		return "is a path; a dataset name has no leading /, e.g. \"rpool/microvms\" (its mount point is state_dir)"
	}
	if len(parts) < 2 {
		return "must name a dataset inside a pool, as POOL/NAME, e.g. \"rpool/microvms\""
	}
	if p := parts[0]; p == "" || !(p[0] >= 'a' && p[0] <= 'z' || p[0] >= 'A' && p[0] <= 'Z') {
		return "does not start with a pool name; write it as POOL/NAME, e.g. \"rpool/microvms\""
	}
	for _, part := range parts {
		if part == "" || part == "." || part == ".." {
			return "has an empty, . or .. component; write it as POOL/NAME, e.g. \"rpool/microvms\""
		}
		for _, c := range part {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_-.:", c)) {
				return fmt.Sprintf("contains %q; dataset names use letters, digits and _ - . : only, e.g. \"rpool/microvms\"", c)
			}
		}
	}
	if len(s) > 200 {
		return "is too long; ZFS names are at most 255 bytes with the VM and snapshot names added"
	}
	return ""
}

// resources reads vcpu, memory, hypervisor, image and dns from vals into vm.
func (p *parser) resources(vm *VM, vals map[string]*value, table string) {
	if v, ok := vals["vcpu"]; ok {
		if n, ok := p.num(v, table+".vcpu"); ok {
			if n < 1 || n > 64 {
				p.errorf(v.pos, "%s.vcpu = %d is out of range; use 1 to 64", table, n)
			}
			vm.VCPU = n
		}
	}
	if v, ok := vals["memory"]; ok && v.kind == unstable.String {
		p.errorf(v.pos, "%s.memory = %q must be a whole number of MiB, not a string%s", table, v.str, mibHint(v.str))
	} else if ok {
		if n, ok := p.num(v, table+".memory"); ok {
			if n < 128 || n > 1<<20 {
				p.errorf(v.pos, "%s.memory = %d is out of range; it is in MiB, use 128 to 1048576 (e.g. memory = 1024 for 1 GiB)", table, n)
			}
			vm.MemoryMiB = n
		}
	}
	if v, ok := vals["hypervisor"]; ok {
		if s, ok := p.str(v, table+".hypervisor"); ok {
			if !slices.Contains(Hypervisors, Hypervisor(s)) {
				p.errorf(v.pos, "%s.hypervisor = %q is not supported; use %s%s", table, s, quoted(Hypervisors, " or "), suggest(s, Hypervisors))
			}
			vm.Hypervisor = Hypervisor(s)
		}
	}
	if v, ok := vals["image"]; ok {
		if s, ok := p.str(v, table+".image"); ok {
			if !isName(s) {
				p.errorf(v.pos, "%s.image = %q is not an image name; use lowercase letters, digits and '-', e.g. \"debian\"", table, s)
			}
			vm.Image = s
		}
	}
	if v, ok := vals["ssh_keys"]; ok {
		if v.kind != unstable.Array {
			p.errorf(v.pos, "%s.ssh_keys must be a list of public keys, e.g. ssh_keys = [\"ssh-ed25519 AAAA... me@laptop\"]", table)
		} else {
			vm.SSHKeys = nil
			for _, k := range v.list {
				if f := strings.Fields(k); len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") && !strings.HasPrefix(f[0], "ecdsa-") && !strings.HasPrefix(f[0], "sk-") {
					p.errorf(v.pos, "%s.ssh_keys: %q is not an OpenSSH public key; paste a line of ~/.ssh/id_ed25519.pub", table, k)
					continue
				}
				vm.SSHKeys = append(vm.SSHKeys, k)
			}
		}
	}
	if v, ok := vals["autostart"]; ok {
		if v.kind != unstable.Bool {
			p.errorf(v.pos, "%s.autostart must be true or false, not %s", table, kindName(v.kind))
		} else {
			vm.Autostart = v.str == "true"
		}
	}
	if v, ok := vals["dns"]; ok {
		if s, ok := p.str(v, table+".dns"); ok {
			if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" || a.Is4In6() {
				p.errorf(v.pos, "%s.dns = %q is not an IP address; e.g. dns = \"1.1.1.1\" or \"2606:4700:4700::1111\"", table, s)
			} else {
				vm.DNS = a.String()
			}
		}
	}
}

// mibHint suggests the number of MiB a size such as "2G" or "512MiB" is.
func mibHint(s string) string {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return "; e.g. memory = 1024 for 1 GiB"
	}
	scale := map[string]float64{"": 1, "M": 1, "MB": 1, "MIB": 1, "G": 1024, "GB": 1024, "GIB": 1024, "T": 1 << 20, "TB": 1 << 20, "TIB": 1 << 20}
	m, ok := scale[unit]
	if !ok {
		return "; e.g. memory = 1024 for 1 GiB"
	}
	return fmt.Sprintf("; write memory = %d", int(f*m))
}

// subnet parses and checks one VM subnet.
func (p *parser) subnet(v *value, key string) (netip.Prefix, bool) {
	s, ok := p.str(v, key)
	if !ok {
		return netip.Prefix{}, false
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		p.errorf(v.pos, "%s = %q is not a subnet in CIDR form; write it like \"10.1.0.0/24\"", key, s)
		return netip.Prefix{}, false
	}
	switch {
	case !pfx.Addr().Is4():
		p.errorf(v.pos, "%s = %q is not IPv4; subnet is the VM's IPv4 network, e.g. \"10.1.0.0/24\", and its IPv6 /64 is derived from it (ipv6 and ipv6_prefix in [host])", key, s)
	case pfx.Bits() < 16 || pfx.Bits() > 29:
		p.errorf(v.pos, "%s = %q: prefix /%d is out of range; use /16 to /29 (the seed uses /24)", key, s, pfx.Bits())
	case pfx.Masked() != pfx:
		p.errorf(v.pos, "%s = %q has host bits set; the network address is %q", key, s, pfx.Masked().String())
	case pfx.Overlaps(TailscaleRange):
		p.errorf(v.pos, "%s = %q overlaps Tailscale's %s, where tailnet addresses live; use a range inside 10.0.0.0/8, e.g. \"10.1.0.0/24\"", key, s, TailscaleRange)
	case !private(pfx):
		p.errorf(v.pos, "%s = %q is not a private range; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16", key, s)
	default:
		return pfx, true
	}
	return netip.Prefix{}, false
}

// overlaps rejects VM subnets that overlap each other. (Overlaps with
// Tailscale's range are caught per subnet; with the uplink's network, by
// hostnet.Check, which reads the host.)
func (p *parser) overlaps() {
	for i, a := range p.in.VMs {
		at := p.in.keys["vm."+a.Name+".subnet"]
		for _, b := range p.in.VMs[:i] {
			if a.Subnet.Overlaps(b.Subnet) {
				bt := p.in.keys["vm."+b.Name+".subnet"]
				p.errorf(at, "vm.%s.subnet %s overlaps vm.%s.subnet %s (line %d); each VM needs its own subnet", a.Name, a.Subnet, b.Name, b.Subnet, bt.Line)
			}
		}
	}
}

// macFor derives a stable, locally administered, unicast MAC from the name,
// so a VM keeps its MAC when its subnet or the file order changes.
func macFor(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("microvm:" + name))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// nextFree suggests the first 10.N.0.0/24 no VM uses.
func nextFree(used map[netip.Prefix]string) string {
	for n := 1; n < 256; n++ {
		c := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 24)
		free := true
		for u := range used {
			if u.Overlaps(c) {
				free = false
				break
			}
		}
		if free {
			return c.String()
		}
	}
	return "10.255.0.0/24"
}

var privateRanges = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

func private(p netip.Prefix) bool {
	for _, r := range privateRanges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func isName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// fixName proposes a valid name close to s.
func fixName(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case c == '-' || c == '_' || c == '.' || c == ' ':
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" || out[0] < 'a' || out[0] > 'z' {
		out = "vm-" + out
	}
	if len(out) > MaxNameLen {
		out = out[:MaxNameLen]
	}
	return out
}

// validIfName accepts the interface names the program can write safely in
// nftables rules and ip commands: letters, digits, '.', '_' and '-'. Linux
// allows more (quotes, '*', which nftables reads as a wildcard), which no
// uplink needs.
func validIfName(s string) string {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return "is not an interface name; use the name `ip link` shows, e.g. \"eth0\""
	}
	if c, ok := badRune(s, "._-"); ok {
		return fmt.Sprintf("contains %q; interface names here use letters, digits, '.', '_' and '-' only, e.g. \"eth0\" or \"enp1s0.100\"", c)
	}
	return ""
}

// validDir accepts clean absolute paths of letters, digits and / . _ - +:
// they reach the VMMs' and daemons' option syntax (commas separate
// options) and systemd's, where other characters mean something.
func validDir(s string) string {
	if !filepath.IsAbs(s) || filepath.Clean(s) != s || s == "/" {
		return "must be a clean absolute path, e.g. \"/var/lib/microvms\""
	}
	if c, ok := badRune(s, "/._-+"); ok {
		return fmt.Sprintf("contains %q; use a path of letters, digits and / . _ - + only, e.g. \"/var/lib/microvms\"", c)
	}
	return ""
}

// maxUser is the longest user name useradd makes.
const maxUser = 32

func validUser(s string) string {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] == '_') {
		return "is not a user name; e.g. \"microvm\""
	}
	if c, ok := badRune(s, "_-"); ok || strings.ToLower(s) != s {
		if !ok {
			c = []rune(s)[0]
		}
		return fmt.Sprintf("contains %q; the VM users' names are lowercase letters, digits, '_' and '-', e.g. \"microvm\"", c)
	}
	if len(s)+1+MaxNameLen > maxUser {
		return fmt.Sprintf("is too long: each VM's VMM runs as its own user, %s-NAME, and user names have at most %d characters; use at most %d, e.g. \"microvm\"", s, maxUser, maxUser-1-MaxNameLen)
	}
	if s == "root" {
		return "would run the VMMs as root; use an unprivileged prefix such as \"microvm\""
	}
	return ""
}

// badRune returns the first rune of s that is not an ASCII letter or digit
// or in extra.
func badRune(s, extra string) (rune, bool) {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(extra, c)) {
			return c, true
		}
	}
	return 0, false
}

// suggest returns "; did you mean X?" for the closest known word, if any.
func suggest[T ~string](s string, known []T) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := distance(s, string(k)); d < bestD {
			best, bestD = string(k), d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// distance is the Levenshtein distance, for "did you mean".
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// quoted writes names as a person lists them: "a", "b" or "c".
func quoted[T ~string](names []T, last string) string {
	var b strings.Builder
	for i, n := range names {
		switch {
		case i == 0:
		case i == len(names)-1:
			b.WriteString(last)
		default:
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}
