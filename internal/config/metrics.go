package config

import (
	"net/netip"
	"path/filepath"
	"strings"
)

// [host.metrics] turns on the Prometheus endpoint of the host daemon
// (`microvm host`, microvm-host.service, or the detached one up and apply
// start without systemd):
//
//	[host.metrics]
//	listen = "127.0.0.1:9753"   # any address of the host and a port; ":9753" is every address
//
// It is off unless listen is written. The endpoint says nothing a VM's
// guest could not learn about itself, but it names every VM: bind it to
// loopback, to the tailnet address (Tailscale's ACLs then decide who
// scrapes), or to the gateway of a monitoring VM whose allow list opens
// that port ("10.9.0.1 tcp 9753"); every address (":9753") includes the
// uplink's, where nothing but a firewall of the user's own stands in the
// way.

// MetricsSettings is the [host.metrics] table.
type MetricsSettings struct {
	Listen string // ADDRESS:PORT the endpoint listens on; "" when it is off
}

// DefaultMetricsPort is the port the examples and docs use.
const DefaultMetricsPort = 9753

var metricsKeys = []string{"listen"}

// metrics reads [host.metrics].
func (p *parser) metrics(h *Host) {
	v, ok := p.mt["listen"]
	if !ok {
		return
	}
	s, ok := p.str(v, "host.metrics.listen")
	if !ok {
		return
	}
	addr := s
	if strings.HasPrefix(s, ":") {
		addr = "0.0.0.0" + s // every address, as Go's net.Listen reads ":PORT"
	}
	ap, err := netip.ParseAddrPort(addr)
	switch {
	case err != nil:
		p.errorf(v.pos, `host.metrics.listen = %q is not an address and a port; write an IP address of this host and a port, e.g. "127.0.0.1:9753", a monitoring VM's gateway "10.9.0.1:9753", or ":9753" for every address`, s)
	case ap.Port() == 0:
		p.errorf(v.pos, "host.metrics.listen = %q has port 0; give the port Prometheus scrapes, e.g. %d", s, DefaultMetricsPort)
	default:
		h.Metrics.Listen = s
	}
}

// BootsFile counts a VM's starts and restarts, and keeps how long its last
// boot took to be ready, across its supervisor's restarts (package
// runner): RUN_DIR/NAME/boots.json, in the part of the run directory only
// root writes. RUN_DIR is a tmpfs: the counts start again at each boot of
// the host, as a counter does after a restart of the process that keeps it.
func (vm *VM) BootsFile() string { return filepath.Join(vm.RunDir, "boots.json") }
