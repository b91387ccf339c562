package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// statusRow is one VM in status --json.
type statusRow struct {
	Name          string          `json:"name"`
	State         lifecycle.State `json:"state" doc:"running, starting or stopped"`
	Guest         string          `json:"guest,omitempty" doc:"booting or ready (its sshd answers), while running"`
	Address       string          `json:"address" doc:"the guest's address, e.g. 10.1.0.2"`
	Hypervisor    string          `json:"hypervisor" doc:"cloud-hypervisor or qemu"`
	Image         string          `json:"image"`
	VCPU          int             `json:"vcpu"`
	MemoryMiB     int             `json:"memory_mib"`
	Autostart     bool            `json:"autostart"`
	UptimeSeconds int64           `json:"uptime_seconds,omitempty" doc:"while running"`
	VMMPid        int             `json:"vmm_pid,omitempty" doc:"while running"`
	DiskBytes     int64           `json:"disk_bytes" doc:"what its /etc and /var use (0 when it cannot be read: without root)"`
	Changed       bool            `json:"changed_since_start,omitempty" doc:"running with settings, image or kernel that differ from the file's now"`
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
up; starting while its supervisor boots or restarts it; stopped), its
guest (booting until its sshd answers, then ready), address,
hypervisor, image, vCPUs, memory, uptime and the disk its /etc and /var use.
A running VM whose settings in the file changed since it started is marked
with *: microvm update NAME (or apply) restarts it with them.

Under systemd, systemctl status microvm@NAME says the same about one VM.
Reading the disk use of every VM needs root.

--host adds the host's side: the disk used by the images, the VMs and in
all (the seed promises under 10 GB for its 4 VMs), whether the host part is
applied, who keeps the firewall and its last repair, and whether each VM's
subnet is advertised to the tailnet and approved there.

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
			for _, vm := range vms {
				s := lifecycle.StateOf(m, vm)
				r := statusRow{Name: vm.Name, State: s.State, Address: vm.Addr.String(), Hypervisor: string(vm.Hypervisor),
					Image: vm.Image, VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB, Autostart: vm.Autostart}
				if s.State == lifecycle.Running {
					r.UptimeSeconds = int64(s.Since.Seconds())
					r.VMMPid = s.Started.VMMPid
					r.Changed = len(lifecycle.Changes(in, vm, s.Started)) > 0
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
				return printJSON(e.stdout, statusJSON(in, rows, host, usage, uerr))
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
					fmt.Fprintln(e.stdout, "* changed in the file since it started; microvm update NAME restarts it with the new settings")
					break
				}
			}
			if uerr != nil && os.Geteuid() != 0 {
				fmt.Fprintln(e.stderr, "disk use needs root to read; run it with sudo")
			} else if uerr != nil {
				fmt.Fprintf(e.stderr, "disk use: %v\n", uerr)
			}
			if host {
				hostStatus(e, in, usage, uerr)
			}
			return nil
		},
	}
}

// hostStatus prints the host's side of status --host: disk totals, read
// off directly against the design's "disk usage < 10GB total", and the
// Tailscale routes.
func hostStatus(e *env, in *config.Infra, u storage.Usage, uerr error) {
	fmt.Fprintf(e.stdout, "\nhost: storage %s in %s\n", in.Host.Storage, in.Host.StateDir)
	if uerr == nil {
		var vms int64
		for _, b := range u.VMs {
			vms += b
		}
		fmt.Fprintf(e.stdout, "  disk: images %s, VMs %s, total %s (the seed's goal: under 10 GB)\n",
			humanSize(u.Images), humanSize(vms), humanSize(u.Total))
	}
	hostpart.PrintStatus(e.stdout, in)
	tailscale.Status(context.Background(), in).Print(e.stdout)
}
