package cli

import (
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/metrics"
)

func hostCmd() *command {
	var detached bool
	return &command{
		name:  "host",
		args:  "[-f FILE] [--detached]",
		short: "bring the host part back and keep the firewall (what microvm-host.service runs)",
		long: `
Applies the host part of infra.toml, as apply --host-only does (storage,
bridges, TAPs, forwarding, the nftables table, Tailscale's routes), mounts
every VM's directory nosuid,nodev again (with storage = "dir": a guest's
device nodes stay inert while its VM is stopped), then keeps the firewall
until it is stopped: when the table is flushed (nft flush
ruleset, a reload of nftables.service) or edited by hand, it sets every VM
port down at once, so that no VM reaches another, the host or the LAN, loads
the table again and sets the ports up, within a second. Each repair is one
line in its log, and status --host shows the last one.

microvm-host.service runs it at boot, after the network and before any VM:
while the host part cannot be applied (an uplink that is not up yet) it
tries again every 5 s and the VMs wait. A Tailscale that refuses the routes
is only warned about. Needs root.

--detached is how up and apply start it on hosts without systemd: it only
keeps the firewall (they have just applied or checked the host part), logs
to RUN_DIR/host.log, and exits once no VM has run for 10 s.

With [host.metrics] listen in infra.toml it also serves Prometheus metrics
of every VM and of the host part at http://LISTEN/metrics (README,
Monitoring). It reads the file again every few seconds: a changed listen
moves the endpoint, and an address that cannot be bound yet is tried again.

Examples:
  sudo microvm host -f /etc/microvm/infra.toml
  systemctl status microvm-host`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&detached, "detached", false, "keep only the firewall, and exit once no VM runs (how up and apply start it without systemd)")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			// hostpart.Run reads the file itself, again on each try.
			found, err := config.Locate(e.fileFlag)
			if err != nil {
				return err
			}
			file, err := filepath.Abs(found)
			if err != nil {
				return err
			}
			stop, release := stopOnSignal()
			defer release()
			go metrics.Serve(&metrics.Reader{File: file, Cgroups: vmCgroup}, version(), stop, metrics.Logger(e.stderr))
			return hostpart.Run(hostpart.Options{File: file, Detached: detached}, stop, e.stderr)
		},
	}
}
