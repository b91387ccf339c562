package cli

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/pki"
)

// connect opens the admin's etcd client; tests replace it with one that
// dials inside their namespaces.
var connect = fleet.Connect

func fleetInitCmd() *command {
	var dir, etcd string
	var hosts, members []string
	return &command{
		name:   "init",
		args:   "[--dir DIR] --hosts HOST,... --members NAME=ADDR,... [--etcd ENDPOINTS]",
		short:  "make the fleet's CA and certificates, and etcd's users and roles",
		noFile: true,
		long: `
Makes a small certificate authority in DIR (ECDSA P-256, valid 10 years)
and, with it, the certificates etcd and the fleet use:

  ca.crt, ca.key       the CA: every member and host trusts ca.crt; ca.key
                       signs new certificates and stays with you, on no host
  MEMBER.crt, .key     each etcd member's, for its client and peer TLS at
                       its addresses (--members NAME=ADDR; repeat a name for
                       more addresses or DNS names)
  HOST.crt, .key       each host's, whose name etcd takes as its user
  root.crt, root.key   yours: etcd's root, for fleet push and move

Running it again issues only what is missing (a new host, a new member),
reuses the CA and never replaces a key; a certificate that no longer says
what is asked (a member's new address) is refused with the file to remove.

Then copy, to each etcd member, ca.crt, MEMBER.crt and MEMBER.key, and run
etcd with:
  --client-cert-auth --trusted-ca-file ca.crt
  --cert-file MEMBER.crt --key-file MEMBER.key
  --peer-client-cert-auth --peer-trusted-ca-file ca.crt
  --peer-cert-file MEMBER.crt --peer-key-file MEMBER.key
and copy, to each host, ca.crt, HOST.crt and HOST.key. Keep the keys
readable by root only (they are written 0600). A member's certificate
names the addresses it is reached at and connects to the others from; a
machine that runs a member holds all of etcd's data, whatever the roles
say: run the members on machines you trust as much as ca.key.

With --etcd, it then connects to etcd as root and makes etcd enforce who
writes what: a user for each host, whose role may read /microvm/ and write
only /microvm/hosts/HOST/, and root (you); then it turns etcd's
authentication on. Run it again with --etcd after adding a host.

Examples:
  microvm fleet init --dir fleet-certs --hosts hv1,hv2,hv3 \
    --members etcd1=192.168.1.11,etcd2=192.168.1.12,etcd3=192.168.1.13
  microvm fleet init --dir fleet-certs --hosts hv1,hv2,hv3 \
    --members etcd1=192.168.1.11,etcd2=192.168.1.12,etcd3=192.168.1.13 \
    --etcd https://192.168.1.11:2379,https://192.168.1.12:2379,https://192.168.1.13:2379`,
		flags: func(fs *pflag.FlagSet) {
			fs.StringVar(&dir, "dir", "fleet-certs", "write the CA and certificates in `DIR` (made 0700)")
			fs.StringSliceVar(&hosts, "hosts", nil, "a client certificate for each of the fleet's `HOST,...`")
			fs.StringSliceVar(&members, "members", nil, "a member certificate for each of the etcd members `NAME=ADDR,...` (ADDR: an IP address or a DNS name)")
			fs.StringVar(&etcd, "etcd", "", "then set up etcd's users and roles, and turn its authentication on, at `ENDPOINTS` (https://ADDR:2379,...)")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			ms, err := parseMembers(members, hosts)
			if err != nil {
				return err
			}
			for _, h := range hosts {
				if err := pki.CheckName(h); err != nil {
					return fmt.Errorf("%w: --hosts: %w", errUsage, err)
				}
				if h == fleet.RootUser {
					return fmt.Errorf("%w: --hosts: %q is the admin's name in etcd; name the host otherwise", errUsage, h)
				}
			}
			var endpoints []string
			if etcd != "" {
				for _, ep := range strings.Split(etcd, ",") {
					if !strings.HasPrefix(ep, "https://") {
						return fmt.Errorf("%w: --etcd: %q: give https:// URLs, such as https://192.168.1.11:2379 (the fleet's etcd takes TLS only)", errUsage, ep)
					}
					endpoints = append(endpoints, ep)
				}
			}
			if err := issue(e, dir, ms, hosts); err != nil {
				return err
			}
			if endpoints == nil {
				fmt.Fprintf(e.stdout, "copy ca.crt, NAME.crt and NAME.key to each member and host; keep %s/ca.key with you\n", dir)
				return nil
			}
			cli, err := connect(endpoints, fleet.Certs{Dir: dir, Name: fleet.RootUser})
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := fleet.SetupAuth(ctx, cli, hosts); err != nil {
				return fmt.Errorf("setting up etcd's users at %s: %w; is etcd running there with --client-cert-auth and the members' certificates of %s?", etcd, err, dir)
			}
			fmt.Fprintf(e.stdout, "etcd at %s: users root and %s, authentication on\n", etcd, strings.Join(hosts, ", "))
			return nil
		},
	}
}

// member is an etcd member as --members gives it.
type member struct {
	name  string
	ips   []netip.Addr
	names []string
}

// parseMembers reads NAME=ADDR,...: a name given again adds an address.
func parseMembers(args, hosts []string) ([]member, error) {
	var ms []member
	for _, a := range args {
		name, addr, ok := strings.Cut(a, "=")
		if !ok || addr == "" {
			return nil, fmt.Errorf("%w: --members: %q: give NAME=ADDR, such as etcd1=192.168.1.11", errUsage, a)
		}
		if err := pki.CheckName(name); err != nil {
			return nil, fmt.Errorf("%w: --members: %w", errUsage, err)
		}
		if name == fleet.RootUser || slices.Contains(hosts, name) {
			// A member's certificate is a client's too: named as a
			// user, it would act as that user.
			return nil, fmt.Errorf("%w: --members: %q is a host's or the admin's name; give members names of their own, such as etcd1", errUsage, name)
		}
		i := slices.IndexFunc(ms, func(m member) bool { return m.name == name })
		if i < 0 {
			ms = append(ms, member{name: name})
			i = len(ms) - 1
		}
		if ip, err := netip.ParseAddr(addr); err == nil {
			ms[i].ips = append(ms[i].ips, ip)
		} else {
			ms[i].names = append(ms[i].names, addr)
		}
	}
	return ms, nil
}

// issue writes what is missing in dir, and says what it made.
func issue(e *env, dir string, ms []member, hosts []string) error {
	ca, made, err := pki.Open(dir)
	if err != nil {
		return err
	}
	say := func(made bool, what string) {
		verb := "kept"
		if made {
			verb = "made"
		}
		fmt.Fprintf(e.stdout, "%s  %s\n", verb, what)
	}
	say(made, fmt.Sprintf("%s/ca.crt, ca.key: the CA", dir))
	for _, m := range ms {
		made, err := ca.Member(m.name, m.ips, m.names)
		if err != nil {
			return err
		}
		var at []string
		for _, ip := range m.ips {
			at = append(at, ip.String())
		}
		say(made, fmt.Sprintf("%s/%s.crt, %s.key: etcd member at %s", dir, m.name, m.name, strings.Join(append(at, m.names...), ", ")))
	}
	for _, h := range append(slices.Clone(hosts), fleet.RootUser) {
		made, err := ca.Client(h)
		if err != nil {
			return err
		}
		what := "host"
		if h == fleet.RootUser {
			what = "the admin (etcd's root)"
		}
		say(made, fmt.Sprintf("%s/%s.crt, %s.key: %s", dir, h, h, what))
	}
	return nil
}
