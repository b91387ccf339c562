package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Where fleet commands find etcd and their certificate when no flag says.
const (
	envEtcd       = "MICROVM_ETCD"        // comma-separated endpoints
	envCerts      = "MICROVM_FLEET_CERTS" // the certificates' directory
	defaultCerts  = "/etc/microvm/fleet"
	adminCertName = "root"
)

// etcdFlags are the flags of every command that talks to etcd.
type etcdFlags struct {
	endpoints string
	certs     string
	name      string
}

func (f *etcdFlags) register(fs *pflag.FlagSet, name string) {
	fs.StringVar(&f.endpoints, "etcd", os.Getenv(envEtcd), "etcd's client URLs, comma-separated (default $"+envEtcd+")")
	f.registerCert(fs, name)
}

// registerCert registers --certs and --name: whose certificate, where.
func (f *etcdFlags) registerCert(fs *pflag.FlagSet, name string) {
	certs := os.Getenv(envCerts)
	if certs == "" {
		certs = defaultCerts
	}
	fs.StringVar(&f.certs, "certs", certs, "the directory of ca.crt and NAME.crt, NAME.key (default $"+envCerts+" or "+defaultCerts+")")
	fs.StringVar(&f.name, "name", name, "whose certificate: \"root\" for the admin, a host's name for a host")
}

func (f *etcdFlags) list() []string {
	var eps []string
	for _, s := range strings.Split(f.endpoints, ",") {
		if s = strings.TrimSpace(s); s != "" {
			eps = append(eps, s)
		}
	}
	return eps
}

func (f *etcdFlags) connect() (*clientv3.Client, error) {
	eps := f.list()
	if len(eps) == 0 {
		return nil, fmt.Errorf("%w: say where etcd is: --etcd https://HOST:2379,... or $%s", errUsage, envEtcd)
	}
	return fleet.Connect(eps, fleet.Certs{Dir: f.certs, Name: f.name})
}

func fleetCmd() *command {
	return &command{
		name:   "fleet",
		args:   "COMMAND",
		short:  "run many hosts from one infra.toml held in etcd",
		noFile: true,
		long: `
A fleet is many hosts under one infra.toml: the file declares its hosts
([fleet.host.NAME]), fleet push stores it in etcd and places each VM on a
host, and every host runs microvm host --fleet, which applies its own part
of the file with the single-host code and writes back how its VMs are.
docs/fleet.md has the design and a tutorial for two hosts.

Examples:
  microvm fleet init --dir ./fleet-certs --hosts hv1,hv2 --members hv1=192.168.1.11,hv2=192.168.1.12
  microvm fleet push --etcd https://192.168.1.11:2379 infra.toml
  microvm fleet status
  microvm move web --to hv2`,
		sub: fleetSubcommands(),
	}
}

func fleetPushCmd() *command {
	var ef etcdFlags
	var replaces int64
	return &command{
		name:   "push",
		args:   "[--etcd URLS] [--replaces REVISION] FILE",
		short:  "validate a fleet's infra.toml, place its new VMs, and store it in etcd",
		noFile: true,
		long: `
Validates FILE as a fleet's file (every host's part with it), places the VMs
that have no host yet (a VM with host = "NAME" there; the others on the host
with the most free memory), and writes the file and the placements in one
etcd transaction. Each host's daemon then applies its part.

The transaction succeeds only if nothing it read changed: a push racing
another push or a move is refused, and can be run again. --replaces REVISION
refuses the push unless the fleet's file is still at that revision (fleet
status and fleet pull print it): an edit of an old copy is refused, never
merged. A VM that left the file loses its placement; its host stops it and
keeps its data.

Examples:
  microvm fleet push infra.toml
  microvm fleet push --replaces 42 infra.toml`,
		flags: func(fs *pflag.FlagSet) {
			ef.register(fs, adminCertName)
			fs.Int64Var(&replaces, "replaces", 0, "refuse unless the fleet's file is at this revision")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name the fleet's file, e.g. microvm fleet push infra.toml", errUsage)
			}
			src, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			cli, err := ef.connect()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := fleet.Push(ctx, cli, args[0], src, replaces)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "pushed revision %d (replacing %d)\n", p.Rev, p.Replaced)
			for _, vm := range slices.Sorted(maps.Keys(p.Placed)) {
				fmt.Fprintf(e.stdout, "placed %s on %s\n", vm, p.Placed[vm])
			}
			for _, vm := range p.Removed {
				fmt.Fprintf(e.stdout, "removed %s (its host stops it and keeps its data)\n", vm)
			}
			return nil
		},
	}
}

func fleetPullCmd() *command {
	var ef etcdFlags
	return &command{
		name:   "pull",
		args:   "[--etcd URLS]",
		short:  "print the fleet's infra.toml, with its revision",
		noFile: true,
		long: `
Prints the fleet's file as it is in etcd, after a first comment line with
its revision: edit it and push it with --replaces REVISION.

Examples:
  microvm fleet pull > infra.toml`,
		flags: func(fs *pflag.FlagSet) { ef.register(fs, adminCertName) },
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			st, err := loadFleet(&ef)
			if err != nil {
				return err
			}
			if st.File == nil {
				return fmt.Errorf("the fleet has no file yet; run microvm fleet push infra.toml")
			}
			fmt.Fprintf(e.stdout, "# fleet revision %d: microvm fleet push --replaces %d FILE\n", st.FileRev, st.FileRev)
			_, err = e.stdout.Write(st.File)
			return err
		},
	}
}

func fleetStatusCmd() *command {
	var ef etcdFlags
	return &command{
		name:   "status",
		args:   "[--etcd URLS]",
		short:  "every host and every VM of the fleet: where it runs and how it is",
		noFile: true,
		long: `
Prints each host (alive while its lease holds, lost when it ended; the
revision of the fleet's file it applied, its last error) and each VM (the
host it is placed on, its state there and whether its guest answers, a
move under way). A lost host's VMs show their last known state.

When etcd does not answer, on a host of the fleet it says what that host's
daemon last wrote: the revision of its part, and since when it has had no
answer from etcd (its VMs run on meanwhile; microvm status lists them).

Examples:
  microvm fleet status
  microvm fleet status --etcd https://192.168.1.11:2379 --name hv1`,
		flags: func(fs *pflag.FlagSet) { ef.register(fs, adminCertName) },
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			st, err := loadFleet(&ef)
			if err != nil {
				if s := localReport(); s != "" {
					return fmt.Errorf("%w\n%s", err, s)
				}
				return err
			}
			fmt.Fprint(e.stdout, fleetReport(st))
			return nil
		},
	}
}

// localReport is what this host's daemon last said of itself
// (Host.FleetState), for fleet status when etcd does not answer; "" on a
// host that runs no part of a fleet. The part is the host's infra.toml
// ($MICROVM_CONFIG or the default).
func localReport() string {
	path, err := config.Locate("")
	if err != nil {
		return ""
	}
	in, err := config.Load(path)
	if err != nil || in.Part.Host == "" {
		return ""
	}
	b, err := safedir.ReadPrivate(in.Host.FleetState())
	var l fleet.Local
	if err != nil || json.Unmarshal(b, &l) != nil {
		return ""
	}
	s := fmt.Sprintf("this host, %s, runs its part of revision %d of the fleet's file as it was (microvm status lists its VMs)", l.Host, l.Applied)
	if l.EtcdLost != nil {
		s += fmt.Sprintf("; its daemon has had no answer from etcd since %s (%s ago)", l.EtcdLost.Local().Format(time.DateTime), time.Since(*l.EtcdLost).Round(time.Second))
	}
	return s
}

func loadFleet(ef *etcdFlags) (*fleet.State, error) {
	cli, err := ef.connect()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return fleet.Load(ctx, cli)
}

// fleetReport is fleet status's text: hosts, then VMs.
func fleetReport(st *fleet.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "fleet file: revision %d\n\n", st.FileRev)
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HOST\tSTATE\tAPPLIED\tVMS\tSAID\tERROR")
	names := map[string]bool{}
	if in, err := st.Model(); err == nil {
		for _, h := range in.Fleet {
			names[h.Name] = true
		}
	}
	for h := range st.Hosts {
		names[h] = true
	}
	for _, h := range slices.Sorted(maps.Keys(names)) {
		hs := st.Hosts[h]
		state := "lost"
		if st.Alive[h] {
			state = "alive"
		} else if hs.Host == "" {
			state = "never seen"
		}
		said := "-"
		if !hs.At.IsZero() {
			said = time.Since(hs.At).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", h, state, hs.Applied, len(fleet.PartOf(st.Placement, h)), said, hs.Error)
	}
	w.Flush()
	b.WriteString("\n")
	w = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VM\tHOST\tSTATE\tGUEST\tMOVE")
	for _, vm := range slices.Sorted(maps.Keys(st.Placement)) {
		h := st.Placement[vm]
		state, guest := "unknown", "-"
		for _, v := range st.Hosts[h].VMs {
			if v.Name == vm {
				state, guest = v.State, "booting"
				if v.Ready {
					guest = "ready"
				}
			}
		}
		if !st.Alive[h] {
			state = "host lost (last: " + state + ")"
		}
		move := "-"
		if m, ok := st.Moves[vm]; ok {
			move = fmt.Sprintf("%s -> %s: %s", m.From, m.To, m.Step)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", vm, h, state, guest, move)
	}
	w.Flush()
	return b.String()
}

// partClient connects to etcd as the host whose part in is, with what the
// part records: how a local command finds a VM on another host.
func partClient(in *config.Infra) (*clientv3.Client, error) {
	p := in.Part
	if len(p.Etcd) == 0 {
		return nil, fmt.Errorf("%s records no etcd endpoints", in.File)
	}
	return fleet.Connect(p.Etcd, fleet.Certs{Dir: p.Certs, Name: p.Host})
}

func fleetSubcommands() []*command {
	return []*command{fleetInitCmd(), fleetPushCmd(), fleetPullCmd(), fleetStatusCmd(), fleetPlaceCmd(), fleetSendCmd(), fleetReceiveCmd()}
}

func fleetPlaceCmd() *command {
	var ef etcdFlags
	var to string
	var withoutData bool
	return &command{
		name:   "place",
		args:   "VM --to HOST --without-data",
		short:  "place a VM on another host without carrying its data (its host is lost, or you copied it)",
		noFile: true,
		long: `
For a VM whose host is lost for good (fleet status says lost), or whose
data you copied yourself (with storage = "dir", where move cannot send
it): places it on HOST, which starts it from what is in HOST's
STATE_DIR/VM: the data you put there, or a fresh /etc and /var from its
image. Its data on the old host is not touched. Refused while the VM runs
on a host that is alive: microvm move takes the data along instead.
--without-data says you know the program carries none of its data.

Examples:
  microvm fleet place db --to hv1 --without-data`,
		flags: func(fs *pflag.FlagSet) {
			ef.register(fs, adminCertName)
			fs.StringVar(&to, "to", "", "the host to place the VM on")
			fs.BoolVar(&withoutData, "without-data", false, "the program carries none of the VM's data (lost, or copied by you)")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 || to == "" {
				return fmt.Errorf("%w: name one VM and its new host, e.g. microvm fleet place db --to hv1 --without-data", errUsage)
			}
			if !withoutData {
				return fmt.Errorf("%w: the program carries none of the VM's data to %s; say you know with --without-data", errUsage, to)
			}
			cli, err := ef.connect()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			from, err := fleet.Replace(ctx, cli, args[0], to)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "placed %s on %s (it was on %s; its data there is untouched)\n", args[0], to, from)
			return nil
		},
	}
}
