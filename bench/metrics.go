package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/metrics"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// scrapes is how many scrapes each figure is the median of.
const scrapes = 20

type metricsResult struct {
	n               int
	running         bool
	read            time.Duration // Read and Emit, in process
	allocs, bytes   uint64        // per Read and Emit
	series          int
	http            time.Duration // a scrape of microvm host's endpoint
	body            int           // its size
	host            time.Duration // the endpoint's own CPU time per scrape
	procs, hostProc int
}

// runMetrics measures a scrape of the metrics endpoint with 4 and 250
// VMs (stand-ins), stopped, and running: each VM then has a supervisor
// with two children, real processes its started record names.
func runMetrics(args []string) error {
	m := readMachine("")
	fmt.Printf("metrics scrape; load average at start %s\n\n", m.Load)
	tmp, err := os.MkdirTemp("", "bench-metrics-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	build := exec.Command("go", "build", "-o", tmp+"/", "./cmd/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building: %s %w (run from the repository's root)", out, err)
	}
	var rs []metricsResult
	for _, n := range []int{4, 250} {
		r, err := metricsAt(filepath.Join(tmp, "microvm"), n)
		if err != nil {
			return fmt.Errorf("N=%d: %w", n, err)
		}
		rs = append(rs, r...)
	}
	t := table{head: []string{"N VMs", "VMs", "series", "read + encode in process (median)", "allocations per scrape", "allocated per scrape",
		"scrape of `microvm host` over HTTP (median)", "its CPU time per scrape", "response"}}
	for _, r := range rs {
		what := "stopped (stand-ins)"
		if r.running {
			what = fmt.Sprintf("running (%d processes)", r.procs)
		}
		t.add(r.n, what, r.series, ms(r.read), r.allocs, fmt.Sprintf("%.0f KiB", float64(r.bytes)/1024), ms(r.http), ms(r.host), fmt.Sprintf("%.0f KiB", float64(r.body)/1024))
	}
	fmt.Println()
	t.print(os.Stdout)

	var b strings.Builder
	b.WriteString("## Metrics\n\n")
	b.WriteString("Command: `go run ./bench metrics` (as root, from the repository's root; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, `A scrape of the endpoint (README, Monitoring) with N VMs: the host part applied in a sandbox, a stand-in namespace
per VM (a port of its bridge: N more links for the netlink dump), first with every VM stopped, then "running": each VM
with a supervisor that has two children (three real processes, as a supervisor, its VMM and a daemon), named by a started
record, so that a scrape reads /proc for every process of the host and each VM's statm. "Read + encode" is the program's
own work in process (metrics.Reader.Read, then every metric made and encoded in Prometheus' text format), the median of
%d, with the Go allocations it makes (runtime.MemStats). "Over HTTP" is a real `+"`microvm host -f FILE`"+` serving
[host.metrics] in the sandbox, scraped %d times from the same namespace; "its CPU time" is the daemon's own (user and
system, from /proc) over those scrapes, divided by their number. Disk use, snapshots and Tailscale are read in the
background (every 5 minutes, 30 s) and cost a scrape nothing; a scrape runs no command.

`, scrapes, scrapes)
	b.WriteString(t.markdown())
	first, last := rs[1], rs[len(rs)-1] // running, at the smallest and the largest N
	fmt.Fprintf(&b, "\nAt N = %d with every VM running, a scrape takes %s in process (%s over HTTP) and allocates %.1f MiB; a running VM adds %d series.\n",
		last.n, ms(last.read), ms(last.http), float64(last.bytes)/(1<<20), (last.series-first.series)/max(1, last.n-first.n))
	return writeSection("metrics", b.String())
}

// metricsAt measures one N, stopped then running.
func metricsAt(bin string, n int) ([]metricsResult, error) {
	dir, err := os.MkdirTemp("", "bench-metrics-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The port the endpoint listens on is the sandbox host's own loopback.
	text := infraTOML(n, dir+"/state", "/run/mvb-m"+fmt.Sprint(n), "", false) + "[host.metrics]\nlisten = \"127.0.0.1:9753\"\n"
	in, file, err := parseInfra(dir, text)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(in.Host.RunDir)
	sb, err := sandbox.New(in)
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	if err := sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	}); err != nil {
		return nil, err
	}
	if err := sb.AddStandIns(); err != nil {
		return nil, err
	}
	host := exec.Command("ip", "netns", "exec", sb.Host, bin, "host", "-f", file)
	log, _ := os.Create(filepath.Join(dir, "host.log"))
	host.Stdout, host.Stderr = log, log
	if err := host.Start(); err != nil {
		return nil, err
	}
	defer func() { host.Process.Signal(syscall.SIGTERM); host.Wait() }()
	client := nsClient(sb.Host)
	if err := waitServing(client); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "host.log"))
		return nil, fmt.Errorf("%w; its log:\n%s", err, b)
	}
	var out []metricsResult
	for _, running := range []bool{false, true} {
		var kill func()
		if running {
			if kill, err = fakeRunning(in); err != nil {
				return nil, err
			}
		}
		r, err := measure(sb.Host, file, client, host.Process.Pid)
		if kill != nil {
			kill()
		}
		if err != nil {
			return nil, err
		}
		r.n, r.running, r.procs = n, running, 3*n
		fmt.Printf("N=%d running=%v: %d series, read %s (%d allocs, %d KiB), HTTP %s (%d KiB), daemon CPU %s per scrape\n",
			n, running, r.series, ms(r.read), r.allocs, r.bytes/1024, ms(r.http), r.body/1024, ms(r.host))
		out = append(out, r)
	}
	return out, nil
}

// measure times scrapes in process and over HTTP.
func measure(ns, file string, client *http.Client, daemon int) (r metricsResult, err error) {
	reader := &metrics.Reader{File: file}
	var reads []time.Duration
	var allocs, bytes uint64
	err = sandbox.Do(ns, func() error {
		scrape := func() int {
			var ms []prometheus.Metric
			metrics.Emit(reader.Read(), "bench", func(m prometheus.Metric) { ms = append(ms, m) })
			metrics.Encode(io.Discard, ms)
			return len(ms)
		}
		r.series = scrape() // warm: the model read once
		for range scrapes {
			var a, b runtime.MemStats
			runtime.ReadMemStats(&a)
			start := time.Now()
			scrape()
			reads = append(reads, time.Since(start))
			runtime.ReadMemStats(&b)
			allocs += b.Mallocs - a.Mallocs
			bytes += b.TotalAlloc - a.TotalAlloc
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	r.read, r.allocs, r.bytes = median(reads), allocs/scrapes, bytes/scrapes
	var https []time.Duration
	cpu0 := cpuOf(daemon)
	for range scrapes {
		start := time.Now()
		resp, err := client.Get("http://127.0.0.1:9753/metrics")
		if err != nil {
			return r, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		https = append(https, time.Since(start))
		r.body = len(body)
	}
	r.host = (cpuOf(daemon) - cpu0) / scrapes
	r.http = median(https)
	return r, nil
}

// cpuOf is the CPU time process pid took, from /proc/PID/stat.
func cpuOf(pid int) time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var ticks int64
	for _, i := range []int{11, 12} { // utime, stime: fields 14 and 15
		var v int64
		fmt.Sscan(f[i], &v)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// fakeRunning gives every VM a supervisor with two children, and the
// started record a running VM has; kill stops them.
func fakeRunning(in *config.Infra) (kill func(), err error) {
	var cmds []*exec.Cmd
	kill = func() {
		for _, c := range cmds {
			syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			c.Wait()
		}
		for i := range in.VMs {
			os.Remove(in.VMs[i].StartedFile())
		}
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		c := exec.Command("sh", "-c", "sleep 3600 & sleep 3600 & wait")
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			kill()
			return nil, err
		}
		cmds = append(cmds, c)
		run, _ := proc.Of(c.Process.Pid)
		d, err := supervise.OpenRunDir(vm)
		if err != nil {
			kill()
			return nil, err
		}
		rec, _ := json.Marshal(runner.Started{Settings: map[string]string{"memory": "512"}, Time: time.Now(),
			VMMPid: run.Pid, VMMStart: run.Start, RunPid: run.Pid, RunStart: run.Start})
		err = d.WriteFile("started.json", rec, 0o644)
		d.Close()
		if err != nil {
			kill()
			return nil, err
		}
	}
	time.Sleep(500 * time.Millisecond) // the children started
	return kill, nil
}

// nsClient is an HTTP client whose connections are made in namespace ns.
func nsClient(ns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := sandbox.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

func waitServing(c *http.Client) error {
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if resp, err := c.Get("http://127.0.0.1:9753/metrics"); err == nil {
			resp.Body.Close()
			return nil
		}
	}
	return fmt.Errorf("microvm host does not serve the metrics 60 s after it started")
}
