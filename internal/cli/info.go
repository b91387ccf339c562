package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func infoCmd() *command {
	var asJSON bool
	return &command{
		name:  "info",
		args:  "[-f FILE] [--json] NAME",
		short: "show one VM in full: network, processes, what changed, disk, snapshots",
		long: `
Shows everything about one VM: its state, the processes that run it (the
VMM, the supervisor and, without systemd, its keeper) and since when, its
network (subnets, addresses and gateways of IPv4 and IPv6, bridge, TAP,
MAC; with an egress list, its names and the addresses it may reach now),
its resources, its limits and what it takes of them (memory, processes,
CPU, disk), the image it boots (with image_writable, what its own
overlay holds), which files of its /etc differ from its image's, what
changed in the file since it started (what update would restart it for),
where its data and logs are, the disk its /etc and /var use and its
snapshots (storage = "zfs"). Reading the disk use, the snapshots and the
addresses needs root; without it they are left out.

Examples:
  microvm info vm1
  microvm info vm1 --json`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON (docs/cli.md)")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			in, vm, err := e.oneVM(args)
			if err != nil {
				return err
			}
			m, err := e.manager()
			if err != nil {
				return err
			}
			d := infoOf(in, m, vm)
			if asJSON {
				return printJSON(e.stdout, d)
			}
			printInfo(e, d)
			return nil
		},
	}
}

// infoDoc is info --json.
type infoDoc struct {
	Version       int             `json:"version" doc:"the version of this document's format"`
	File          string          `json:"file" doc:"the infra.toml read"`
	VM            vmModel         `json:"vm" doc:"the VM as the file derives it (as in validate --json)"`
	State         lifecycle.State `json:"state" doc:"running, starting, orphaned or stopped"`
	Manager       supervise.Kind  `json:"manager" doc:"systemd, or detached (a keeper process) where systemd is not PID 1"`
	Unit          string          `json:"unit" doc:"its systemd unit"`
	VMMPid        int             `json:"vmm_pid,omitempty" doc:"while running"`
	SupervisorPid int             `json:"supervisor_pid,omitempty" doc:"microvm run NAME, while running"`
	KeeperPid     int             `json:"keeper_pid,omitempty" doc:"without systemd, while kept running"`
	Started       *time.Time      `json:"started,omitempty" doc:"when its VMM started (RFC 3339)"`
	UptimeSeconds int64           `json:"uptime_seconds,omitempty"`
	Changes       []string        `json:"changes" doc:"what differs between what it runs with and the file, e.g. \"memory 512 -> 640\""`
	ConsoleLog    string          `json:"console_log"`
	SupervisorLog string          `json:"supervisor_log" doc:"without systemd; with it, journalctl -u UNIT"`
	DiskBytes     *int64          `json:"disk_bytes,omitempty" doc:"what its /etc and /var use; absent when it cannot be read"`
	Snapshots     []snapshotDoc   `json:"snapshots" doc:"with storage = \"zfs\", oldest first"`
	ImageDir      string          `json:"image_dir" doc:"the image it boots (running) or would boot: NAME, or NAME.VERSION for a declared image"`
	ImageMadeOf   string          `json:"image_made_of,omitempty" doc:"what that image is made of, as image list says"`
	WritableBytes *int64          `json:"writable_bytes,omitempty" doc:"with image_writable: what its own overlay over the image holds"`
	Limits        limitsDoc       `json:"limits" doc:"what it may take and, while it runs, what it takes"`
	Etc           *etcDoc         `json:"etc,omitempty" doc:"how its /etc differs from its image's, as last merged; absent before its first start"`
	EgressNow     []egressDoc     `json:"egress_now" doc:"with an egress list: the addresses it may reach now, for which name, and for how long (needs root)"`
	Problems      []string        `json:"problems" doc:"what could not be read (disk use, snapshots), and why"`
}

// etcDoc is how a VM's /etc differs from its image's.
type etcDoc struct {
	Changed []string `json:"changed" doc:"paths of the image the VM changed (content, mode, owner, link target); the first 20"`
	Added   []string `json:"added" doc:"paths the image does not have (services' symlinks among them); the first 20"`
	Removed []string `json:"removed" doc:"paths of the image the VM does not have; the first 20"`
	Total   int      `json:"total" doc:"how many paths differ in all; the files the program writes (managed, declared, run_once's) are left out"`
}

// etcShown is how many paths of each kind info --json lists, etcLine
// how many its text does.
const etcShown, etcLine = 20, 5

func infoOf(in *config.Infra, m supervise.Manager, vm *config.VM) infoDoc {
	s := lifecycle.StateOf(m, vm)
	d := infoDoc{Version: jsonVersion, File: in.File, VM: modelOf(vm), State: s.State, Manager: m.Kind(), Unit: supervise.Unit(vm.Name),
		ConsoleLog: vm.ConsoleLog(), SupervisorLog: vm.SupervisorLog(), Changes: []string{}, Snapshots: []snapshotDoc{}, Problems: []string{},
		EgressNow: []egressDoc{}}
	if s.State == lifecycle.Running {
		d.VMMPid, d.SupervisorPid = s.Started.VMMPid, s.Started.RunPid
		t := s.Started.Time
		d.Started, d.UptimeSeconds = &t, int64(s.Since.Seconds())
		d.Changes = orEmpty(lifecycle.Changes(in, vm, s.Started))
	}
	if keeper, ok := supervise.KeeperPid(vm); ok {
		d.KeeperPid = keeper.Pid
	}
	d.ImageDir = imageOf(in, vm)
	if s.State == lifecycle.Running && s.Started.Settings["image_dir"] != "" {
		d.ImageDir = s.Started.Settings["image_dir"]
	}
	if m, err := image.ReadMeta(in.Host, d.ImageDir); err == nil && !m.Made.IsZero() {
		d.ImageMadeOf = m.String()
	}
	var problems []string
	d.Limits, problems = limitsOf(in, vm, s)
	d.Problems = append(d.Problems, problems...)
	if os.Geteuid() != 0 {
		d.Problems = append(d.Problems, "disk use and snapshots need root to read")
		return d
	}
	if vm.HasEgress() {
		if now, err := egressNow(); err != nil {
			d.Problems = append(d.Problems, "the addresses it may reach: "+err.Error())
		} else {
			d.EgressNow = now[vm.Name]
		}
	}
	if c, ok, err := guest.EtcDiff(vm); err != nil {
		d.Problems = append(d.Problems, "/etc against the image: "+err.Error())
	} else if ok {
		first := func(l []string) []string { return orEmpty(l[:min(len(l), etcShown)]) }
		d.Etc = &etcDoc{Changed: first(c.Changed), Added: first(c.Added), Removed: first(c.Removed), Total: c.Len()}
	}
	if vm.ImageWritable {
		if n, err := storage.DiskUsage(filepath.Dir(vm.ImageUpper())); err == nil {
			d.WritableBytes = &n
		} else {
			d.Problems = append(d.Problems, "the writable image's use: "+err.Error())
		}
	}
	data := storage.For(in.Host)
	if u, err := data.Usage(in); err == nil {
		b := u.VMs[vm.Name]
		d.DiskBytes = &b
	} else {
		d.Problems = append(d.Problems, "disk use: "+err.Error())
	}
	switch snaps, err := data.Snapshots(vm); {
	case err == nil:
		d.Snapshots = snapshotDocs(snaps)
	case !errors.Is(err, storage.ErrNoSnapshots): // none to list with plain directories
		d.Problems = append(d.Problems, "snapshots: "+err.Error())
	}
	return d
}

func printInfo(e *env, d infoDoc) {
	vm := d.VM
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	line := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	line("name", "%s (%s)", vm.Name, d.File)
	state := string(d.State)
	if d.Started != nil {
		state += fmt.Sprintf(" since %s (%s)", d.Started.Local().Format("2006-01-02 15:04:05"), uptime(secs(d.UptimeSeconds)))
	}
	line("state", "%s", state)
	procs := []string{}
	if d.VMMPid != 0 {
		procs = append(procs, fmt.Sprintf("%s pid %d", vm.Hypervisor, d.VMMPid), fmt.Sprintf("supervisor pid %d", d.SupervisorPid))
	}
	if d.KeeperPid != 0 {
		procs = append(procs, fmt.Sprintf("keeper pid %d", d.KeeperPid))
	}
	if len(procs) == 0 {
		procs = append(procs, "none")
	}
	line("processes", "%s (%s, unit %s)", strings.Join(procs, ", "), d.Manager, d.Unit)
	line("network", "%s: address %s, gateway %s", vm.Subnet, vm.Address, vm.Gateway)
	if vm.Subnet6 != "" {
		line("", "%s: address %s, gateway %s", vm.Subnet6, vm.Address6, vm.Gateway6)
	}
	if len(vm.Egress) > 0 {
		line("egress", "only %s on the internet (its gateway answers, and asks %s)", strings.Join(vm.Egress, ", "), vm.DNS)
		now := "none"
		if len(d.EgressNow) > 0 {
			now = egressText(d.EgressNow)
		}
		line("", "reachable now: %s", now)
	}
	line("links", "bridge %s, TAP %s, MAC %s", vm.Bridge, vm.TAP, vm.MAC)
	line("resources", "%d vCPU, %d MiB, %s, dns %s", vm.VCPU, vm.MemoryMiB, vm.Hypervisor, vm.DNS)
	mem, pids, cpu, disk := d.Limits.text()
	line("limits", "memory %s, processes %s, cpu %s, disk %s", mem, pids, cpu, disk)
	if d.Limits.Cgroup != "" {
		line("cgroup", "%s", d.Limits.Cgroup)
	}
	img := d.ImageDir
	if d.ImageMadeOf != "" {
		img += " (" + d.ImageMadeOf + ")"
	}
	if d.WritableBytes != nil {
		img += fmt.Sprintf("; writable: its own overlay holds %s", humanSize(*d.WritableBytes))
	}
	line("image", "%s", img)
	line("autostart", "%t", vm.Autostart)
	switch {
	case d.State != lifecycle.Running:
		line("changed", "- (not running)")
	case len(d.Changes) == 0:
		line("changed", "nothing since it started")
	default:
		line("changed", "%s (microvm update %s restarts it with them)", strings.Join(d.Changes, ", "), vm.Name)
	}
	if e := d.Etc; e != nil {
		var parts []string
		for _, k := range []struct {
			what  string
			paths []string
		}{{"changed", e.Changed}, {"added", e.Added}, {"removed", e.Removed}} {
			if len(k.paths) > etcLine {
				k.paths = append(k.paths[:etcLine:etcLine], "...")
			}
			if len(k.paths) > 0 {
				parts = append(parts, k.what+" "+strings.Join(k.paths, " "))
			}
		}
		text := "as its image's"
		if e.Total > 0 {
			text = fmt.Sprintf("%d paths differ from its image's: %s", e.Total, strings.Join(parts, "; "))
		}
		line("/etc", "%s", text)
	}
	data := vm.StateDir
	if d.DiskBytes != nil {
		data += " (" + humanSize(*d.DiskBytes) + ")"
	}
	line("data", "%s", data)
	line("logs", "%s, %s", d.ConsoleLog, d.SupervisorLog)
	if len(d.Snapshots) > 0 {
		last := d.Snapshots[len(d.Snapshots)-1]
		line("snapshots", "%d, the newest %s (%s)", len(d.Snapshots), last.Name, last.Created.Local().Format("2006-01-02 15:04:05"))
	}
	tw.Flush()
	for _, p := range d.Problems {
		fmt.Fprintf(e.stderr, "%s\n", p)
	}
}
