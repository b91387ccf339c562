package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/metrics"
)

func hostCmd() *command {
	var detached bool
	var ef etcdFlags
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

With --fleet ETCD_URLS the host is one of a fleet (docs/fleet.md): it
reads the fleet's file and placements from etcd, writes its own part to
its file (-f, by default /etc/microvm/infra.toml, which it never takes
over from a user: a file without [fleet.part] is refused), applies it with
apply's code whenever it changes, and writes back how its VMs are; its
lease says it is alive. Losing etcd stops nothing: it keeps the last part,
says since when etcd is gone, and converges when etcd returns. --name is
the host's name in the file and in its certificate (default: the
hostname); --certs the directory of ca.crt, NAME.crt and NAME.key.

Examples:
  sudo microvm host -f /etc/microvm/infra.toml
  sudo microvm host --fleet https://192.168.1.11:2379,https://192.168.1.12:2379
  systemctl status microvm-host`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&detached, "detached", false, "keep only the firewall, and exit once no VM runs (how up and apply start it without systemd)")
			hostname, _ := os.Hostname()
			fs.StringVar(&ef.endpoints, "fleet", "", "be a host of the fleet whose etcd is at these client URLs, comma-separated")
			ef.registerCert(fs, hostname)
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			if ef.endpoints != "" {
				return fleetHost(e, &ef)
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

// fleetHost is host --fleet: the fleet's member keeps the part file, and
// once there is one, the host part is kept as without a fleet.
func fleetHost(e *env, ef *etcdFlags) error {
	file := e.fileFlag
	if file == "" {
		file = config.SystemFile
	}
	file, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	cli, err := ef.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	stop, release := stopOnSignal()
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	var keeper sync.Once
	keep := func() {
		keeper.Do(func() {
			go metrics.Serve(&metrics.Reader{File: file, Cgroups: vmCgroup}, version(), stop, metrics.Logger(e.stderr))
			go func() {
				if err := hostpart.Run(hostpart.Options{File: file}, stop, e.stderr); err != nil {
					fmt.Fprintf(e.stderr, "host part: %v\n", err)
				}
			}()
		})
	}
	// A part from before (a reboot): its host part is kept from the start,
	// etcd or not, as the VMs systemd starts at boot need it.
	if in, err := config.Load(file); err == nil && in.Part.Host == ef.name {
		keep()
	}
	m := &fleet.Member{
		Client: cli, Etcd: ef.list(), Certs: fleet.Certs{Dir: ef.certs, Name: ef.name}, Name: ef.name, File: file,
		Version: version(), Log: e.stderr, Local: func(part *config.Infra) string { return part.Host.FleetState() },
		Apply: func(ctx context.Context, file string) error {
			if err := applyFile(&env{stdin: e.stdin, stdout: e.stderr, stderr: e.stderr, fileFlag: file}, false); err != nil {
				return err
			}
			keep()
			return nil
		},
		Observe: func(file string) ([]fleet.VMStatus, error) { return observe(e, file) },
	}
	return m.Run(ctx)
}

// observe is how the VMs of the part file are, for the fleet.
func observe(e *env, file string) ([]fleet.VMStatus, error) {
	le := &env{stdout: e.stderr, stderr: e.stderr, fileFlag: file}
	in, err := le.load()
	if err != nil {
		return nil, err
	}
	m, err := le.manager()
	if err != nil {
		return nil, err
	}
	var out []fleet.VMStatus
	for i := range in.VMs {
		s := lifecycle.StateOf(m, &in.VMs[i])
		out = append(out, fleet.VMStatus{Name: in.VMs[i].Name, State: string(s.State), Ready: s.State == lifecycle.Running && s.Started.Ready != nil})
	}
	return out, nil
}
