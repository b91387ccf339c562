package cli

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// statusRow is one VM in status --json.
type statusRow struct {
	Name          string          `json:"name"`
	State         lifecycle.State `json:"state" doc:"running, starting, orphaned (processes left without supervisor: down ends them) or stopped"`
	Guest         string          `json:"guest,omitempty" doc:"booting or ready (its sshd answers), while running"`
	Address       string          `json:"address" doc:"the guest's address, e.g. 10.1.0.2"`
	Hypervisor    string          `json:"hypervisor" doc:"cloud-hypervisor or qemu; like image, vcpu and memory_mib, what a running VM runs with"`
	Image         string          `json:"image" doc:"what it runs: the image's directory (NAME.VERSION for a declared image); while stopped, what it would boot"`
	VCPU          int             `json:"vcpu"`
	MemoryMiB     int             `json:"memory_mib"`
	Autostart     bool            `json:"autostart"`
	UptimeSeconds int64           `json:"uptime_seconds,omitempty" doc:"while running"`
	VMMPid        int             `json:"vmm_pid,omitempty" doc:"while running"`
	DiskBytes     int64           `json:"disk_bytes" doc:"what its /etc and /var use (0 when it cannot be read: without root); with storage = \"dir\" measured at most 5 minutes ago"`
	Changed       bool            `json:"changed_since_start,omitempty" doc:"running with settings, image or kernel that differ from the file's now"`
	Changes       []string        `json:"changes,omitempty" doc:"what differs, as update says it: \"memory 512 -> 1024\""`
	ReadyAfter    float64         `json:"ready_after_seconds,omitempty" doc:"from its VMM's start until its sshd answered, once ready"`
}

func statusCmd(name string) *command {
	var asJSON, host bool
	short := "show every VM: state, address, hypervisor, image, resources, uptime, disk"
	if name != "status" {
		short = "the same as status"
	}
	return &command{
		name:  name,
		args:  "[-f FILE] [--json] [--host] [NAME...]",
		short: short,
		long: `
Prints one line per VM of infra.toml: its state (running once its VMM is
up; starting while its supervisor boots or restarts it; orphaned when its
VMM or daemons are left running without supervisor, which was killed with
its keeper: down ends them; stopped), its
guest (booting until its sshd answers, then ready), address,
hypervisor, image, vCPUs, memory, uptime and the disk its /etc and /var use.
A running VM shows what it runs with (the image version it booted, its
vCPUs and memory); where the file says otherwise now it is marked with *,
and a line below says what changed: microvm update NAME (or apply)
restarts it with the file's.

Under systemd, systemctl status microvm@NAME says the same about one VM.
Reading the disk use of every VM needs root. With storage = "dir" it is
measured at most every 5 minutes (walking a guest's files costs what the
guest makes it cost); with ZFS it is the datasets' used.

--host adds the host's side: the disk used by the images, the VMs and in
all (the seed promises under 10 GB for its 4 VMs), each VM's limits and
what it takes of them (memory, processes, CPU, disk), whether the host part
is applied, who keeps the firewall and its last repair, for each VM with an
egress list the addresses it may reach now (and for which name), and
whether each VM's subnets (IPv4 and IPv6) are advertised to the tailnet
and approved there.

Examples:
  microvm status
  microvm list
  microvm status --json vm1
  microvm status --host`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print JSON (docs/cli.md)")
			fs.BoolVar(&host, "host", false, "also show disk totals and Tailscale routes")
		},
		run: func(e *env, args []string) error {
			in, err := e.load()
			if err != nil {
				return err
			}
			vms, err := namedVMs(in, args, true)
			if err != nil {
				return err
			}
			m, err := e.manager()
			if err != nil {
				return err
			}
			usage, uerr := storage.For(in.Host).Usage(in)
			var rows []statusRow
			var limits []limitsDoc
			var problems []string
			for _, vm := range vms {
				s := lifecycle.StateOf(m, vm)
				if host {
					l, p := limitsOf(in, vm, s)
					limits = append(limits, l)
					for _, msg := range p {
						problems = append(problems, vm.Name+": "+msg)
					}
				}
				r := statusRow{Name: vm.Name, State: s.State, Address: vm.Addr.String(), Hypervisor: string(vm.Hypervisor),
					Image: imageOf(in, vm), VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB, Autostart: vm.Autostart}
				if s.State == lifecycle.Running {
					r.UptimeSeconds = int64(s.Since.Seconds())
					r.VMMPid = s.Started.VMMPid
					r.Changes = lifecycle.Changes(in, vm, s.Started)
					r.Changed = len(r.Changes) > 0
					running(&r, s.Started.Settings)
					r.Guest = s.Started.Guest()
					if s.Started.Ready != nil {
						r.ReadyAfter = s.Started.Ready.Sub(s.Started.Time).Round(100 * time.Millisecond).Seconds()
					}
				}
				if uerr == nil {
					r.DiskBytes = usage.VMs[vm.Name]
				}
				rows = append(rows, r)
			}
			if asJSON {
				return printJSON(e.stdout, statusJSON(in, rows, host, usage, uerr, limits))
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tGUEST\tADDRESS\tHYPERVISOR\tIMAGE\tVCPU\tMEMORY\tUPTIME\tDISK")
			for _, r := range rows {
				up, disk, guest := "-", "?", "-"
				if r.State == lifecycle.Running {
					up = uptime(secs(r.UptimeSeconds))
				}
				if uerr == nil {
					disk = humanSize(r.DiskBytes)
				}
				state := r.State
				if r.Changed {
					state += "*"
				}
				if r.Guest != "" {
					guest = r.Guest
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", r.Name, state, guest, r.Address, r.Hypervisor, r.Image, r.VCPU, r.MemoryMiB, up, disk)
			}
			tw.Flush()
			for _, r := range rows {
				if r.Changed {
					fmt.Fprintf(e.stdout, "* %s runs with what the file has changed since: %s; microvm update %s restarts it with the file's\n", r.Name, strings.Join(r.Changes, ", "), r.Name)
				}
			}
			if uerr != nil && os.Geteuid() != 0 {
				fmt.Fprintln(e.stderr, "disk use needs root to read; run it with sudo")
			} else if uerr != nil {
				fmt.Fprintf(e.stderr, "disk use: %v\n", uerr)
			}
			if host {
				hostStatus(e, in, usage, uerr, limits)
				for _, p := range problems {
					fmt.Fprintln(e.stderr, p)
				}
			}
			return nil
		},
	}
}

// hostStatus prints the host's side of status --host: disk totals, read
// off directly against the design's "disk usage < 10GB total", and the
// Tailscale routes.
func hostStatus(e *env, in *config.Infra, u storage.Usage, uerr error, limits []limitsDoc) {
	fmt.Fprintf(e.stdout, "\nhost: storage %s in %s\n", in.Host.Storage, in.Host.StateDir)
	if uerr == nil {
		var vms int64
		for _, b := range u.VMs {
			vms += b
		}
		fmt.Fprintf(e.stdout, "  disk: images %s, VMs %s, total %s (the seed's goal: under 10 GB)\n",
			humanSize(u.Images), humanSize(vms), humanSize(u.Total))
	}
	printLimits(e.stdout, limits)
	hostpart.PrintStatus(e.stdout, in)
	printEgress(e, in)
	tailscale.Status(context.Background(), in).Print(e.stdout)
}

// printEgress says, for each VM with an egress list, what it may reach
// now.
func printEgress(e *env, in *config.Infra) {
	now, err := egressNow()
	for _, vm := range in.VMs {
		if !vm.HasEgress() {
			continue
		}
		text := "none"
		switch {
		case err != nil:
			text = "cannot be read: " + err.Error()
		case len(now[vm.Name]) > 0:
			text = egressText(now[vm.Name])
		}
		fmt.Fprintf(e.stdout, "egress %s: only %s; reachable now: %s\n", vm.Name, strings.Join(config.EgressNames(vm.Egress), ", "), text)
	}
}

// imageOf is the image a stopped VM would boot: the current version of a
// declared image, once built.
func imageOf(in *config.Infra, vm *config.VM) string {
	if r, err := image.Resolve(in, vm.Image); err == nil && r.Dir != "" {
		return r.Dir
	}
	return vm.Image
}

// running fills in r what its VM runs with, from the settings it was
// started with, where the file may since say otherwise.
func running(r *statusRow, st map[string]string) {
	if v := st["image_dir"]; v != "" {
		r.Image = v
	} else if v := st["image"]; v != "" {
		r.Image = v
	}
	if v := st["hypervisor"]; v != "" {
		r.Hypervisor = v
	}
	if n, err := strconv.Atoi(st["vcpu"]); err == nil {
		r.VCPU = n
	}
	if n, err := strconv.Atoi(st["memory"]); err == nil {
		r.MemoryMiB = n
	}
}
