package metrics

import (
	"io"
	"runtime"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
)

// The metric families, named as Prometheus' conventions say: a prefix
// for the program, base units (seconds, bytes), _total on counters. A
// VM's are labelled vm="NAME", by its name in infra.toml: no label value
// comes from a guest, and a guest cannot add series (there are as many as
// the file has VMs). Counters start again when what keeps them does: a
// VM's TAP counters when its TAP is made again, its drop counters when
// apply loads the table again, its starts and restarts when the host
// boots; rate() and increase() take such resets in their stride.

// States are every state a VM can be in, for microvm_vm_state.
var States = []lifecycle.State{lifecycle.Running, lifecycle.Starting, lifecycle.Stopped}

// Sources are the parts of a sample that can fail on their own.
var Sources = []string{"config", "processes", "links", "firewall", "disk", "tailscale"}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	vmInfo      = desc("microvm_vm_info", "A VM of infra.toml: its address and the hypervisor it runs under (always 1).", "vm", "address", "hypervisor")
	vmState     = desc("microvm_vm_state", "The VM's state: 1 for the one it is in (running: its VMM is up; starting: its supervisor runs without a VMM; stopped), 0 for the others.", "vm", "state")
	vmReady     = desc("microvm_vm_guest_ready", "1 once the running VM's guest answers on its SSH port, 0 while it boots or when the VM is not running.", "vm")
	vmBootReady = desc("microvm_vm_boot_ready_seconds", "How long the VM's last boot took from its VMM's start until its guest answered on its SSH port.", "vm")
	vmStarts    = desc("microvm_vm_starts_total", "VMMs the VM's supervisors started since the host booted.", "vm")
	vmRestarts  = desc("microvm_vm_vmm_restarts_total", "VMMs started again after the previous one died (crashed or was killed), since the host booted; stops asked for are not counted.", "vm")
	vmStartTime = desc("microvm_vm_start_time_seconds", "When the running VM's VMM started, in seconds since the Unix epoch.", "vm")
	vmCPU       = desc("microvm_vm_cpu_seconds_total", "CPU time of all the running VM's host processes (its VMM, its virtiofs daemons, its supervisor), read from its cgroup where it has one.", "vm")
	vmMemory    = desc("microvm_vm_memory_resident_bytes", "Memory the running VM's host processes hold in RAM, the guest's RAM they share counted once (or what its cgroup is charged).", "vm")
	vmGuestMem  = desc("microvm_vm_memory_guest_bytes", "The RAM the running VM's guest was given.", "vm")
	vmNet       = map[string]*prometheus.Desc{}
	vmDropPkts  = desc("microvm_vm_firewall_dropped_packets_total", "Packets the firewall dropped: direction=\"from\" what the VM sent, \"to\" what was sent to it.", "vm", "direction")
	vmDropBytes = desc("microvm_vm_firewall_dropped_bytes_total", "Bytes the firewall dropped: direction=\"from\" what the VM sent, \"to\" what was sent to it.", "vm", "direction")
	vmDisk      = desc("microvm_vm_disk_bytes", "Disk used by the VM's /etc and /var (with ZFS, its dataset with its snapshots), as last measured.", "vm")
	vmSnaps     = desc("microvm_vm_snapshots", "ZFS snapshots of the VM's data, as last counted.", "vm")

	hostTable      = desc("microvm_host_firewall_table_present", "1 when the program's nftables table (inet microvm) is loaded.")
	hostKept       = desc("microvm_host_firewall_kept", "1 when a microvm host keeps the firewall (repairs the table when it is flushed or edited).")
	hostRepairs    = desc("microvm_host_firewall_repairs_total", "Repairs of the table by the microvm host that keeps it, since it started.")
	hostLastRepair = desc("microvm_host_firewall_last_repair_timestamp_seconds", "When the microvm host that keeps the firewall heard of the change it last repaired, in seconds since the Unix epoch.")
	hostTSUp       = desc("microvm_host_tailscale_up", "1 when tailscaled runs and is logged in, so the VM subnets can reach the tailnet.")
	hostTSAdv      = desc("microvm_host_tailscale_route_advertised", "1 when the VM's subnet is among the routes tailscaled advertises.", "vm", "subnet")
	hostTSOK       = desc("microvm_host_tailscale_route_approved", "1 when the control server approved the VM's subnet route.", "vm", "subnet")
	hostDisk       = desc("microvm_host_disk_bytes", "Disk used, as last measured: part=\"images\" the images, \"state_dir\" all of state_dir.", "part")
	hostDiskAt     = desc("microvm_host_disk_measured_timestamp_seconds", "When the disk use was last measured, in seconds since the Unix epoch.")
	sourceOK       = desc("microvm_metrics_source_ok", "1 when this part of the metrics could be read at this scrape (the last time for disk and tailscale), 0 when its metrics are missing; the daemon's log says why.", "source")
	buildInfo      = desc("microvm_build_info", "The microvm program serving the metrics (always 1).", "version", "goversion")
)

// The network families: a VM's TAP, as its guest sees it.
var netFamilies = []struct {
	name, help string
	value      func(Traffic) uint64
}{
	{"microvm_vm_network_receive_bytes_total", "Bytes the VM received on its network interface (its TAP sent them).", func(t Traffic) uint64 { return t.RxBytes }},
	{"microvm_vm_network_receive_packets_total", "Packets the VM received on its network interface.", func(t Traffic) uint64 { return t.RxPackets }},
	{"microvm_vm_network_receive_errors_total", "Errors on what the VM received (its TAP's transmit errors).", func(t Traffic) uint64 { return t.RxErrors }},
	{"microvm_vm_network_receive_drops_total", "Packets for the VM dropped on its TAP (its guest did not take them in time).", func(t Traffic) uint64 { return t.RxDrops }},
	{"microvm_vm_network_transmit_bytes_total", "Bytes the VM sent on its network interface (its TAP received them).", func(t Traffic) uint64 { return t.TxBytes }},
	{"microvm_vm_network_transmit_packets_total", "Packets the VM sent on its network interface.", func(t Traffic) uint64 { return t.TxPackets }},
	{"microvm_vm_network_transmit_errors_total", "Errors on what the VM sent (its TAP's receive errors).", func(t Traffic) uint64 { return t.TxErrors }},
	{"microvm_vm_network_transmit_drops_total", "Packets the VM sent that its TAP dropped.", func(t Traffic) uint64 { return t.TxDrops }},
}

func init() {
	for _, f := range netFamilies {
		vmNet[f.name] = desc(f.name, f.help, "vm")
	}
}

// Collector is a prometheus.Collector of a Reader's samples: each scrape
// takes one.
type Collector struct {
	R       *Reader
	Version string
	// Errors is told what could not be read at a scrape (for the log).
	Errors func(map[string]error)
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{vmInfo, vmState, vmReady, vmBootReady, vmStarts, vmRestarts, vmStartTime, vmCPU, vmMemory, vmGuestMem,
		vmDropPkts, vmDropBytes, vmDisk, vmSnaps, hostTable, hostKept, hostRepairs, hostLastRepair, hostTSUp, hostTSAdv, hostTSOK,
		hostDisk, hostDiskAt, sourceOK, buildInfo} {
		ch <- d
	}
	for _, f := range netFamilies {
		ch <- vmNet[f.name]
	}
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.R.Read()
	if c.Errors != nil {
		c.Errors(s.Errors)
	}
	Emit(s, c.Version, func(m prometheus.Metric) { ch <- m })
}

// Emit turns sample s into metrics.
func Emit(s Sample, version string, emit func(prometheus.Metric)) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...))
	}
	for _, vm := range s.VMs {
		n := vm.Name
		gauge(vmInfo, 1, n, vm.Address, vm.Hypervisor)
		for _, st := range States {
			gauge(vmState, bool01(vm.State == st), n, string(st))
		}
		gauge(vmReady, bool01(vm.GuestReady), n)
		if vm.Boots.LastReady > 0 {
			gauge(vmBootReady, vm.Boots.LastReady.Seconds(), n)
		}
		counter(vmStarts, float64(vm.Boots.Starts), n)
		counter(vmRestarts, float64(vm.Boots.Restarts), n)
		if vm.State == lifecycle.Running {
			gauge(vmStartTime, float64(vm.Started.UnixNano())/1e9, n)
			gauge(vmGuestMem, float64(vm.GuestMemory), n)
		}
		if vm.HasResources {
			counter(vmCPU, vm.CPU.Seconds(), n)
			gauge(vmMemory, float64(vm.Memory), n)
		}
		if vm.HasTraffic {
			for _, f := range netFamilies {
				counter(vmNet[f.name], float64(f.value(vm.Traffic)), n)
			}
		}
		if vm.HasDrops {
			counter(vmDropPkts, float64(vm.DroppedFrom.Packets), n, "from")
			counter(vmDropPkts, float64(vm.DroppedTo.Packets), n, "to")
			counter(vmDropBytes, float64(vm.DroppedFrom.Bytes), n, "from")
			counter(vmDropBytes, float64(vm.DroppedTo.Bytes), n, "to")
		}
		if vm.HasDisk {
			gauge(vmDisk, float64(vm.Disk), n)
		}
		if vm.HasSnaps {
			gauge(vmSnaps, float64(vm.Snapshots), n)
		}
	}
	h := s.Host
	if h.TableRead {
		gauge(hostTable, bool01(h.TablePresent))
	}
	gauge(hostKept, bool01(h.Keeper))
	if h.Keeper {
		counter(hostRepairs, float64(h.Repairs))
		if !h.LastRepair.IsZero() {
			gauge(hostLastRepair, float64(h.LastRepair.UnixNano())/1e9)
		}
	}
	if ts := h.Tailscale; ts != nil {
		gauge(hostTSUp, bool01(ts.Down == "" && ts.Problem == ""))
		for _, r := range ts.Routes {
			gauge(hostTSAdv, bool01(r.Advertised), r.VM, r.Subnet.String())
			gauge(hostTSOK, bool01(r.Approved), r.VM, r.Subnet.String())
		}
	}
	if h.HasDisk {
		gauge(hostDisk, float64(h.DiskImages), "images")
		gauge(hostDisk, float64(h.DiskTotal), "state_dir")
		gauge(hostDiskAt, float64(h.DiskAt.UnixNano())/1e9)
	}
	srcs := append([]string(nil), Sources...)
	sort.Strings(srcs)
	for _, src := range srcs {
		gauge(sourceOK, bool01(s.Errors[src] == nil), src)
	}
	gauge(buildInfo, 1, version, goVersion())
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// goVersion is the Go the program was built with, as microvm_build_info
// has it.
func goVersion() string { return runtime.Version() }

// Encode writes ms in Prometheus' text format, as the endpoint does (for
// the benchmark, which measures a scrape without its HTTP).
func Encode(w io.Writer, ms []prometheus.Metric) error {
	reg := prometheus.NewRegistry()
	if err := reg.Register(fixed(ms)); err != nil {
		return err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(w, mf); err != nil {
			return err
		}
	}
	return nil
}

// fixed collects a fixed list of metrics.
type fixed []prometheus.Metric

func (f fixed) Describe(ch chan<- *prometheus.Desc) { (&Collector{}).Describe(ch) }
func (f fixed) Collect(ch chan<- prometheus.Metric) {
	for _, m := range f {
		ch <- m
	}
}
