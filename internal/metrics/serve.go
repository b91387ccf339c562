package metrics

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CheckEvery is how often Serve reads infra.toml again for [host.metrics]
// listen, and tries again to listen where it could not.
var CheckEvery = 5 * time.Second

// ScrapeTimeout bounds a scrape: past it, the endpoint answers 503.
const ScrapeTimeout = 10 * time.Second

// Handler serves the collector's metrics (and the serving process's own)
// in Prometheus' text format.
func Handler(c *Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            log.New(io.Discard, "", 0),
		ErrorHandling:       promhttp.ContinueOnError,
		Timeout:             ScrapeTimeout,
		MaxRequestsInFlight: 4,
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg, h))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "microvm: Prometheus metrics of this host's VMs at /metrics")
	})
	return mux
}

// Serve serves /metrics where the file's [host.metrics] listen says, until
// stop is closed: what `microvm host` runs beside the firewall it keeps.
// It reads the file again every CheckEvery and moves when listen changes
// (or stops serving when it goes), and tries again while the address
// cannot be bound yet (a VM's gateway, before its bridge is made). Without
// [host.metrics] it serves nothing, and reads nothing but the file. Each
// event is one line through logf.
func Serve(r *Reader, version string, stop <-chan struct{}, logf func(string, ...any)) {
	var (
		addr     string // where it serves; "" when it does not
		srv      *http.Server
		lastErr  string
		refresh  chan struct{}
		reported = map[string]string{}
	)
	var mu sync.Mutex // scrapes may overlap
	c := &Collector{R: r, Version: version, Errors: func(errs map[string]error) {
		mu.Lock()
		defer mu.Unlock()
		// One line when a source starts or stops failing, not one per scrape.
		for _, src := range Sources {
			msg := ""
			if errs[src] != nil {
				msg = errs[src].Error()
			}
			if msg != reported[src] {
				if msg == "" {
					logf("metrics: %s can be read again", src)
				} else {
					logf("metrics: %s cannot be read: %s", src, msg)
				}
				reported[src] = msg
			}
		}
	}}
	handler := Handler(c)
	shut := func() {
		if srv != nil {
			srv.Close()
			logf("metrics: stopped serving on %s", addr)
			srv, addr = nil, ""
		}
	}
	defer func() {
		shut()
		if refresh != nil {
			close(refresh)
		}
	}()
	for {
		want := ""
		if in, _ := r.Model(); in != nil { // an unreadable file keeps the last good model, or none
			want = in.Host.Metrics.Listen
		}
		if want != addr {
			shut()
		}
		if want != "" && srv == nil {
			l, err := net.Listen("tcp", want)
			if err != nil {
				if msg := err.Error(); msg != lastErr {
					logf("metrics: cannot listen on %s (%v); trying again every %s", want, err, CheckEvery)
					lastErr = msg
				}
			} else {
				lastErr = ""
				srv = &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
					WriteTimeout: ScrapeTimeout + 5*time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
					ErrorLog: log.New(io.Discard, "", 0)}
				addr = want
				go func(s *http.Server) {
					if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
						logf("metrics: serving on %s: %v", l.Addr(), err)
					}
				}(srv)
				logf("metrics: serving Prometheus metrics on http://%s/metrics", l.Addr())
				if refresh == nil {
					refresh = make(chan struct{})
					go r.Refresh(refresh)
				}
			}
		}
		select {
		case <-stop:
			return
		case <-time.After(CheckEvery):
		}
	}
}

// Logger is a logf that writes one line per call to w, with the time
// unless the journal, which has it, is listening.
func Logger(w io.Writer) func(string, ...any) {
	journal := os.Getenv("JOURNAL_STREAM") != ""
	return func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if !journal {
			line = time.Now().UTC().Format(time.RFC3339) + " " + line
		}
		fmt.Fprintln(w, strings.TrimRight(line, "\n"))
	}
}
