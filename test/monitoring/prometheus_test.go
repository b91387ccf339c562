// Package monitoring tests the metrics end to end: the endpoint served by
// microvm host in a sandbox, scraped by a real Prometheus (Debian's)
// running in a sandbox namespace, and asked through Prometheus' HTTP API
// for each family, per VM. Stand-ins prove what needs no guest (the
// firewall's drops, a monitoring VM reaching the endpoint at its gateway
// and no other VM reaching it, the host's families); real guests prove the
// rest (traffic on each VM's own TAP, CPU and memory, readiness, a killed
// VMM counted as a restart, the guest's journal across that restart).
package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// client is an HTTP client whose connections are made in namespace ns.
func client(ns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := sandbox.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// prometheus is a Prometheus server run by the test in a namespace.
type prometheus struct {
	ns   string
	http *http.Client
	log  *testenv.SyncBuffer
}

// startPrometheus runs Debian's prometheus in namespace ns, listening on
// its loopback, scraping target every second with examples/monitoring's
// scrape config (its target and interval replaced). It is stopped when
// the test ends.
func startPrometheus(t *testing.T, ns, target string) *prometheus {
	t.Helper()
	testenv.NeedCommands(t, "prometheus")
	example, err := os.ReadFile("../../examples/monitoring/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(example)
	for old, new := range map[string]string{
		`targets: ["127.0.0.1:9753"]`: fmt.Sprintf("targets: [%q]", target),
		"scrape_interval: 15s":        "scrape_interval: 1s",
		"scrape_timeout: 10s":         "scrape_timeout: 1s",
	} {
		if !strings.Contains(cfg, old) {
			t.Fatalf("examples/monitoring/prometheus.yml has no %q any more; update the test", old)
		}
		cfg = strings.ReplaceAll(cfg, old, new)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	alerts, _ := os.ReadFile("../../examples/monitoring/alerts.yml")
	os.WriteFile(filepath.Join(dir, "alerts.yml"), alerts, 0o644)
	p := &prometheus{ns: ns, http: client(ns), log: &testenv.SyncBuffer{}}
	cmd := sandbox.Command(ns, "prometheus", "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address=127.0.0.1:9090", "--log.level=warn")
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus' log:\n%s", p.log.String())
		}
	})
	p.waitFor(t, "up", func(v float64) bool { return v == 1 }, 60*time.Second)
	return p
}

// sample is one series of a query's answer.
type sample struct {
	labels map[string]string
	value  float64
}

// query asks Prometheus' HTTP API for an instant vector.
func (p *prometheus) query(q string) ([]sample, error) {
	resp, err := p.http.Get("http://127.0.0.1:9090/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	var doc struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("query %s: %v: %s", q, err, body)
	}
	if doc.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, doc.Error)
	}
	var out []sample
	for _, r := range doc.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q", q, s)
		}
		out = append(out, sample{r.Metric, v})
	}
	return out, nil
}

// value is the one value q has now; ok is false when it has none.
func (p *prometheus) value(t *testing.T, q string) (float64, bool) {
	t.Helper()
	s, err := p.query(q)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 {
		return 0, false
	}
	return s[0].value, true
}

// waitFor waits until q has one value that ok accepts, and returns it.
func (p *prometheus) waitFor(t *testing.T, q string, ok func(float64) bool, within time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		s, err := p.query(q)
		switch {
		case err != nil:
			last = err.Error()
		case len(s) == 1 && ok(s[0].value):
			return s[0].value
		default:
			last = fmt.Sprint(s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus: %s is %s after %s", q, last, within)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// families lists the microvm families Prometheus has for a selector.
func (p *prometheus) families(t *testing.T, selector string) map[string]bool {
	t.Helper()
	s, err := p.query(fmt.Sprintf(`count by (__name__) ({__name__=~"microvm_.+"%s})`, selector))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, x := range s {
		out[x.labels["__name__"]] = true
	}
	return out
}

// host runs `microvm host -f file` in the sandbox's host namespace, as
// microvm-host.service does, until the test ends.
func host(t *testing.T, sb *sandbox.Sandbox, bin, file string) *testenv.SyncBuffer {
	t.Helper()
	log := &testenv.SyncBuffer{}
	cmd := sandbox.Command(sb.Host, bin, "host", "-f", file)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("microvm host's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(log.String(), "metrics: serving Prometheus metrics on"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("microvm host does not serve the metrics after 30 s:\n%s", log.String())
		}
	}
	return log
}

// mustRun runs the CLI in the sandbox's host namespace.
func mustRun(t *testing.T, ns, bin string, args ...string) string {
	t.Helper()
	out, err := sandbox.Command(ns, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("microvm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// flood sends n pings from namespace ns to addr, 10 ms apart, and does
// not mind that none is answered.
func flood(t *testing.T, ns, addr string, n int) {
	t.Helper()
	sandbox.Command(ns, "ping", "-c", fmt.Sprint(n), "-i", "0.01", "-W", "1", "-q", addr).Run()
}
