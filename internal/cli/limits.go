package cli

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// limitsDoc is what a VM may take and, while it runs, what it takes: in
// info --json and status --host --json.
type limitsDoc struct {
	VM           string `json:"vm"`
	MemoryMaxMiB int    `json:"memory_max_mib" doc:"its cgroup's memory limit: its memory and what its VMM, daemons and supervisor take beside it"`
	MemoryBytes  *int64 `json:"memory_bytes,omitempty" doc:"what its cgroup takes, while it runs"`
	OOMKills     *int   `json:"oom_kills,omitempty" doc:"processes the kernel killed for the memory limit since its cgroup was made, while it runs"`
	PidsMax      int    `json:"pids_max" doc:"processes and threads its cgroup may hold"`
	Pids         *int   `json:"pids,omitempty" doc:"processes and threads in it, while it runs"`
	CPUWeight    int    `json:"cpu_weight" doc:"its share of CPU time against others: 100 per vCPU"`
	CPUMax       string `json:"cpu_max" doc:"at most this much CPU time, e.g. \"150%\"; empty for none"`
	IOWeight     int    `json:"io_weight"`
	DiskMaxBytes int64  `json:"disk_max_bytes" doc:"disk, as the file says, and its volumes' sizes"`
	DiskBytes    *int64 `json:"disk_bytes,omitempty" doc:"what its data holds against it (ZFS referenced, or its project's use); absent when it cannot be read"`
	DiskEnforced bool   `json:"disk_enforced" doc:"the limit is in force: a ZFS refquota, or a project quota"`
	Cgroup       string `json:"cgroup,omitempty" doc:"its cgroup while it runs (on cgroup v1, its memory controller's directory)"`
}

// limitsOf reads vm's limits and, while it runs (s), its use of them;
// problems says what could not be read.
func limitsOf(in *config.Infra, vm *config.VM, s lifecycle.VMState) (d limitsDoc, problems []string) {
	l := vm.Limits
	d = limitsDoc{VM: vm.Name, MemoryMaxMiB: l.MemoryMiB, PidsMax: l.Pids, CPUWeight: l.CPUWeight, IOWeight: l.IOWeight, DiskMaxBytes: vm.DiskQuota()}
	if l.CPUMax > 0 {
		d.CPUMax = fmt.Sprintf("%d%%", l.CPUMax)
	}
	if s.State == lifecycle.Running {
		// Its supervisor's cgroup is the VM's: the unit's under systemd,
		// the keeper's elsewhere. What it runs with may be what the file
		// said when it started.
		g, err := cgroup.Of(s.Started.RunPid)
		var u cgroup.Use
		if err == nil {
			u, err = g.Use()
		}
		if err != nil {
			problems = append(problems, "its cgroup's use: "+err.Error())
		} else {
			d.Cgroup = g.String()
			d.MemoryBytes, d.Pids, d.OOMKills = &u.MemoryBytes, &u.Pids, &u.OOMKills
			if u.MemoryMax > 0 {
				d.MemoryMaxMiB = int(u.MemoryMax >> 20)
			}
			if u.PidsMax > 0 {
				d.PidsMax = u.PidsMax
			}
		}
	}
	if os.Geteuid() != 0 {
		return d, problems
	}
	used, limit, err := storage.DiskUse(in.Host, vm)
	switch {
	case os.IsNotExist(err):
		// Not started yet: nothing held, its limit set at its start.
	case err != nil:
		problems = append(problems, "its disk against its limit: "+err.Error())
	default:
		d.DiskBytes, d.DiskEnforced = &used, limit > 0
	}
	return d, problems
}

// text writes d as the columns of status --host and the lines of info:
// memory, processes, CPU, disk.
func (d limitsDoc) text() (mem, pids, cpu, disk string) {
	mem = fmt.Sprintf("%d MiB", d.MemoryMaxMiB)
	pids = fmt.Sprint(d.PidsMax)
	if d.MemoryBytes != nil {
		mem = fmt.Sprintf("%d/%d MiB", *d.MemoryBytes>>20, d.MemoryMaxMiB)
		pids = fmt.Sprintf("%d/%d", *d.Pids, d.PidsMax)
		if *d.OOMKills > 0 {
			mem += fmt.Sprintf(" (%d OOM kills)", *d.OOMKills)
		}
	}
	cpu = fmt.Sprintf("weight %d", d.CPUWeight)
	if d.CPUMax != "" {
		cpu += ", max " + d.CPUMax
	}
	cpu += fmt.Sprintf(", io weight %d", d.IOWeight)
	disk = config.FormatSize(d.DiskMaxBytes)
	if d.DiskBytes != nil {
		disk = humanSize(*d.DiskBytes) + "/" + disk
		if !d.DiskEnforced {
			disk += " (not enforced)"
		}
	}
	return mem, pids, cpu, disk
}

// printLimits writes the limits table of status --host.
func printLimits(w io.Writer, docs []limitsDoc) {
	fmt.Fprintln(w, "  limits (use of running VMs against them):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "    VM\tMEMORY\tPROCESSES\tCPU\tDISK")
	for _, d := range docs {
		mem, pids, cpu, disk := d.text()
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", d.VM, mem, pids, cpu, disk)
	}
	tw.Flush()
}
