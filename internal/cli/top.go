package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/metrics"
)

// topDoc is top --json: one sample, with the rates over its interval.
type topDoc struct {
	Version  int       `json:"version" doc:"the version of this document's format"`
	Time     time.Time `json:"time" doc:"when the sample was taken (its end)"`
	Interval float64   `json:"interval_seconds" doc:"the time between the two readings the rates are taken over"`
	VMs      []topRow  `json:"vms" doc:"the VMs named, or all of the file's, by name"`
	Host     topHost   `json:"host"`
	Missing  []string  `json:"missing" doc:"what could not be read (e.g. \"firewall: ... operation not permitted\" without root); its fields are 0"`
}

// topRow is one VM in top --json.
type topRow struct {
	Name              string  `json:"name"`
	State             string  `json:"state" doc:"running, starting or stopped"`
	Guest             string  `json:"guest,omitempty" doc:"booting or ready (its sshd answers), while running"`
	CPUPercent        float64 `json:"cpu_percent" doc:"CPU time of its host processes over the interval, in percent of one core (a VM with 2 busy vCPUs shows 200)"`
	CPUSeconds        float64 `json:"cpu_seconds" doc:"CPU time of its host processes since its supervisor started"`
	MemoryBytes       int64   `json:"memory_bytes" doc:"resident memory of its host processes, the guest's RAM they share counted once"`
	GuestMemoryBytes  int64   `json:"guest_memory_bytes" doc:"the RAM its guest was given"`
	RxBytesPerSecond  float64 `json:"rx_bytes_per_second" doc:"what it received over the interval, on its TAP"`
	TxBytesPerSecond  float64 `json:"tx_bytes_per_second" doc:"what it sent over the interval"`
	RxBytes           uint64  `json:"rx_bytes" doc:"received since its TAP was made"`
	TxBytes           uint64  `json:"tx_bytes" doc:"sent since its TAP was made"`
	DroppedPerSecond  float64 `json:"dropped_packets_per_second" doc:"packets from and to it that the firewall dropped, over the interval"`
	DroppedPackets    uint64  `json:"dropped_packets" doc:"since the table was loaded"`
	DiskBytes         int64   `json:"disk_bytes" doc:"what its /etc and /var use (0 when it cannot be read: without root)"`
	UptimeSeconds     int64   `json:"uptime_seconds,omitempty" doc:"while running"`
	Restarts          int     `json:"vmm_restarts" doc:"VMMs started again after one died, since the host booted"`
	ReadyAfterSeconds float64 `json:"ready_after_seconds,omitempty" doc:"how long its last boot took until its sshd answered"`
}

// topHost is the host's side of top --json.
type topHost struct {
	FirewallTable   bool `json:"firewall_table" doc:"the program's nftables table is loaded"`
	FirewallKept    bool `json:"firewall_kept" doc:"a microvm host keeps it"`
	FirewallRepairs int  `json:"firewall_repairs" doc:"its repairs since that microvm host started"`
}

func topCmd() *command {
	var asJSON bool
	var delay time.Duration
	var count int
	var sortBy string
	return &command{
		name:  "top",
		args:  "[-f FILE] [--json] [-d DELAY] [-n COUNT] [--sort cpu|memory|net|name] [NAME...]",
		short: "watch every VM live: CPU, memory, network, drops, disk, uptime",
		long: `
A live view of the VMs, refreshed every DELAY (2 s), as top and incus top
show processes and instances: per VM its state, its guest (booting or
ready), the CPU its host processes take (in percent of one core: its VMM,
its virtiofs daemons, its supervisor), their resident memory against the
RAM its guest was given, what it receives and sends per second on its TAP,
the packets per second the firewall drops from and to it, the disk its
/etc and /var use (measured once a minute), and its uptime. Ctrl-C ends it.

It reads what the metrics endpoint serves ([host.metrics], README's
Monitoring), from the same sources: the run directory, /proc and the
kernel over netlink; it runs no command. Drop counters need root; without
it they show -.

--json prints one sample, over one DELAY (1 s unless given), and exits.

Examples:
  sudo microvm top
  sudo microvm top --sort cpu
  microvm top --json vm1
  microvm top -n 1 -d 5s`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print one sample as JSON (docs/cli.md) and exit")
			fs.DurationVarP(&delay, "delay", "d", 0, "time between refreshes (2s), or the interval of --json's rates (1s)")
			fs.IntVarP(&count, "iterations", "n", 0, "stop after COUNT refreshes (0: until interrupted)")
			fs.StringVar(&sortBy, "sort", "name", "order of the VMs: name, cpu, memory or net")
		},
		run: func(e *env, args []string) error {
			if !slices.Contains([]string{"name", "cpu", "memory", "net"}, sortBy) {
				return fmt.Errorf("%w: --sort %q: use name, cpu, memory or net", errUsage, sortBy)
			}
			if delay < 0 || count < 0 {
				return fmt.Errorf("%w: --delay and --iterations cannot be negative", errUsage)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			vms, err := namedVMs(in, args, true)
			if err != nil {
				return err
			}
			names := map[string]bool{}
			for _, vm := range vms {
				names[vm.Name] = true
			}
			r := &metrics.Reader{File: e.file, Cgroups: vmCgroup}
			if asJSON {
				if delay == 0 {
					delay = time.Second
				}
				_ = r.RefreshDisk() // a disk it cannot read shows 0, as status does
				a := r.Read()
				time.Sleep(delay)
				b := r.Read()
				return printJSON(e.stdout, topJSON(a, b, names))
			}
			if delay == 0 {
				delay = 2 * time.Second
			}
			stop, release := stopOnSignal()
			defer release()
			go func() {
				for {
					_ = r.RefreshDisk()
					select {
					case <-stop:
						return
					case <-time.After(time.Minute):
					}
				}
			}()
			tty := isTerminal(e.stdout)
			prev := r.Read()
			for i := 0; count == 0 || i < count; i++ {
				select {
				case <-stop:
					return nil
				case <-time.After(delay):
				}
				cur := r.Read()
				if tty {
					fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
				} else if i > 0 {
					fmt.Fprintln(e.stdout)
				}
				printTop(e.stdout, prev, cur, names, sortBy)
				prev = cur
			}
			return nil
		},
	}
}

// topRows compares two samples of the same VMs, keeping those in names.
func topRows(a, b metrics.Sample, names map[string]bool) []topRow {
	dt := b.Time.Sub(a.Time).Seconds()
	before := map[string]metrics.VM{}
	for _, vm := range a.VMs {
		before[vm.Name] = vm
	}
	rate := func(now, then uint64) float64 {
		if now < then || dt <= 0 { // a counter that started again
			return 0
		}
		return float64(now-then) / dt
	}
	var rows []topRow
	for _, vm := range b.VMs {
		if !names[vm.Name] {
			continue
		}
		was := before[vm.Name]
		r := topRow{Name: vm.Name, State: string(vm.State), CPUSeconds: vm.CPU.Seconds(), MemoryBytes: vm.Memory,
			GuestMemoryBytes: vm.GuestMemory, RxBytes: vm.Traffic.RxBytes, TxBytes: vm.Traffic.TxBytes,
			DroppedPackets: vm.DroppedFrom.Packets + vm.DroppedTo.Packets, DiskBytes: vm.Disk, Restarts: vm.Boots.Restarts,
			ReadyAfterSeconds: vm.Boots.LastReady.Round(100 * time.Millisecond).Seconds()}
		if vm.State == lifecycle.Running {
			r.Guest = "booting"
			if vm.GuestReady {
				r.Guest = "ready"
			}
			r.UptimeSeconds = int64(b.Time.Sub(vm.Started).Seconds())
			if was.HasResources && vm.HasResources && vm.CPU >= was.CPU && dt > 0 {
				r.CPUPercent = (vm.CPU - was.CPU).Seconds() / dt * 100
			}
		}
		if was.HasTraffic && vm.HasTraffic {
			r.RxBytesPerSecond = rate(vm.Traffic.RxBytes, was.Traffic.RxBytes)
			r.TxBytesPerSecond = rate(vm.Traffic.TxBytes, was.Traffic.TxBytes)
		}
		if was.HasDrops && vm.HasDrops {
			r.DroppedPerSecond = rate(r.DroppedPackets, was.DroppedFrom.Packets+was.DroppedTo.Packets)
		}
		rows = append(rows, r)
	}
	return rows
}

func topJSON(a, b metrics.Sample, names map[string]bool) topDoc {
	d := topDoc{Version: jsonVersion, Time: b.Time.UTC(), Interval: b.Time.Sub(a.Time).Seconds(), VMs: topRows(a, b, names),
		Host:    topHost{FirewallTable: b.Host.TablePresent, FirewallKept: b.Host.Keeper, FirewallRepairs: b.Host.Repairs},
		Missing: missing(b)}
	if d.VMs == nil {
		d.VMs = []topRow{}
	}
	return d
}

// missing says what a sample lacks, one "source: why" each, sorted.
func missing(s metrics.Sample) []string {
	out := []string{}
	for _, src := range metrics.Sources {
		if err := s.Errors[src]; err != nil && src != "tailscale" {
			out = append(out, src+": "+err.Error())
		}
	}
	slices.Sort(out)
	return out
}

// printTop writes one screen of top.
func printTop(w io.Writer, a, b metrics.Sample, names map[string]bool, sortBy string) {
	rows := topRows(a, b, names)
	key := map[string]func(topRow) float64{
		"cpu":    func(r topRow) float64 { return r.CPUPercent },
		"memory": func(r topRow) float64 { return float64(r.MemoryBytes) },
		"net":    func(r topRow) float64 { return r.RxBytesPerSecond + r.TxBytesPerSecond },
	}[sortBy]
	if key != nil {
		slices.SortStableFunc(rows, func(x, y topRow) int {
			switch kx, ky := key(x), key(y); {
			case kx > ky:
				return -1
			case kx < ky:
				return 1
			}
			return 0
		})
	}
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.State]++
	}
	var states []string
	for _, st := range metrics.States {
		if n := counts[string(st)]; n > 0 {
			states = append(states, fmt.Sprintf("%d %s", n, st))
		}
	}
	fw := "firewall table missing"
	switch {
	case b.Errors["firewall"] != nil:
		fw = "firewall not readable (needs root)"
	case b.Host.TablePresent && b.Host.Keeper:
		fw = fmt.Sprintf("firewall kept, %d repairs", b.Host.Repairs)
	case b.Host.TablePresent:
		fw = "firewall loaded, not kept (no microvm host runs)"
	}
	fmt.Fprintf(w, "microvm top - %s, every %s; %d VMs: %s; %s\n\n", b.Time.Format(time.TimeOnly),
		b.Time.Sub(a.Time).Round(100*time.Millisecond), len(rows), strings.Join(states, ", "), fw)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NAME\tSTATE\tGUEST\tCPU%\tMEMORY\tGUEST RAM\tRX/s\tTX/s\tDROPS/s\tDISK\tUPTIME\t")
	dropsOK := b.Errors["firewall"] == nil
	for _, r := range rows {
		dash := func(ok bool, s string) string {
			if !ok {
				return "-"
			}
			return s
		}
		running := r.State == string(lifecycle.Running)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, r.State, dash(running, r.Guest),
			dash(running, fmt.Sprintf("%.1f", r.CPUPercent)), dash(running, humanSize(r.MemoryBytes)), dash(running, humanSize(r.GuestMemoryBytes)),
			humanSize(int64(r.RxBytesPerSecond)), humanSize(int64(r.TxBytesPerSecond)),
			dash(dropsOK, fmt.Sprintf("%.0f", r.DroppedPerSecond)), dash(r.DiskBytes > 0, humanSize(r.DiskBytes)),
			dash(running, uptime(secs(r.UptimeSeconds))))
	}
	tw.Flush()
}

// isTerminal reports whether w is a terminal, where top redraws its
// screen in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
