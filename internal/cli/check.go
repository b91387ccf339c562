package cli

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
)

func checkCmd() *command {
	var target, seenAs, target6, seenAs6, unlisted string
	var wait time.Duration
	return &command{
		name:  "check",
		args:  "[-f FILE] --target ADDR:PORT [--seen-as ADDR] [--target6 [ADDR]:PORT [--seen-as6 ADDR]] [--unlisted NAME] [--wait DURATION]",
		short: "prove the seed's promises from inside the running VMs",
		long: `
Logs in to every VM of infra.toml (as microvm ssh does) and sends real
packets from inside each guest: each VM must reach the internet target
through NAT, no VM may reach another VM or another VM's gateway by TCP, UDP
or ICMP, no VM may reach the host's SSH port, and the host must reach every
VM. Prints the matrix and exits 1 if any promise is broken.

The target is a server on the internet that answers each TCP connection
with a line "seen ADDR", the address it saw the client come from, so NAT is
proven too (microvm demo runs one); --seen-as is the address it must see,
by default the uplink's first IPv4 address. With --target6, an IPv6
server, every VM gets a second row with the same promises over IPv6
(--seen-as6: the uplink's first global IPv6 address with NAT66; a VM's
own address with a routed ipv6_prefix).

A VM with an egress list must resolve the first of its names through its
gateway and reach its first address on the target's port, must not
resolve --unlisted (by default example.com, which no list should name), and
must not reach the target's address (which none of its names should have)
nor its own DNS server. Every VM must be running. Needs root (the admin
key, and ICMP from the host).

Examples:
  sudo microvm check --target 203.0.113.10:8000
  sudo microvm check --target 203.0.113.10:8000 --seen-as 198.51.100.7
  sudo microvm check --target 203.0.113.10:8000 --target6 [2001:db8:113::10]:8000`,
		flags: func(fs *pflag.FlagSet) {
			fs.StringVar(&target, "target", "", "the internet server ADDR:PORT that answers \"seen ADDR\"")
			fs.StringVar(&seenAs, "seen-as", "", "the address the target must see the VMs as (default: the uplink's address)")
			fs.StringVar(&target6, "target6", "", "the same server's IPv6 [ADDR]:PORT, for the IPv6 rows")
			fs.StringVar(&seenAs6, "seen-as6", "", "the address the IPv6 target must see the VMs as, with NAT66 (default: the uplink's global IPv6 address)")
			fs.StringVar(&unlisted, "unlisted", "example.com", "a name that resolves and no egress list names")
			fs.DurationVar(&wait, "wait", 10*time.Second, "how long to keep trying to log in to each VM")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if target == "" {
				return fmt.Errorf("%w: --target is required, e.g. --target 203.0.113.10:8000", errUsage)
			}
			tgt, err := netip.ParseAddrPort(target)
			if err != nil {
				return fmt.Errorf("%w: --target %q is not ADDR:PORT, e.g. 203.0.113.10:8000", errUsage, target)
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			if err := allRunning(e, in); err != nil {
				return err
			}
			uplink, err := uplinkAddr(in, seenAs)
			if err != nil {
				return err
			}
			clients, err := dialAll(in, wait)
			defer func() {
				for _, c := range clients {
					c.Close()
				}
			}()
			if err != nil {
				return err
			}
			p := check.NewGuestProber(clients, check.LocalProber{}, guest.Run)
			t := check.Target{Internet: tgt.Addr(), Port: tgt.Port(), Uplink: uplink, HostSSH: []netip.Addr{uplink}, Unlisted: unlisted}
			if t.IPv6, err = target6Of(in, target6, seenAs6, tgt.Port()); err != nil {
				return err
			}
			r := check.Run(in, p, t)
			r.Print(e.stdout)
			if !r.OK() {
				return fmt.Errorf("a promise does not hold (see the matrix)")
			}
			fmt.Fprintf(e.stdout, "all promises hold for %d VMs\n", len(in.VMs))
			return nil
		},
	}
}

// allRunning says at once which VMs are stopped, instead of waiting to
// log in to them.
func allRunning(e *env, in *config.Infra) error {
	m, err := e.manager()
	if err != nil {
		return err
	}
	var stopped []string
	for i := range in.VMs {
		if lifecycle.StateOf(m, &in.VMs[i]).State == lifecycle.Stopped {
			stopped = append(stopped, in.VMs[i].Name)
		}
	}
	switch len(stopped) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%s is stopped; check needs every VM running (microvm up %s)", stopped[0], stopped[0])
	}
	return fmt.Errorf("%s are stopped; check needs every VM running (microvm up --all)", strings.Join(stopped, ", "))
}

// target6Of is the IPv6 half of check's target: nil without --target6.
// The port is the IPv4 target's when --target6 gives none ("[ADDR]" or
// "ADDR").
func target6Of(in *config.Infra, flagValue, seenAs string, port uint16) (*check.Target6, error) {
	if flagValue == "" {
		return nil, nil
	}
	if !in.Host.IPv6 {
		return nil, fmt.Errorf("%w: --target6: this host's VMs have no IPv6 (ipv6 = false)", errUsage)
	}
	to, err := netip.ParseAddrPort(flagValue)
	if err != nil {
		a, err := netip.ParseAddr(strings.Trim(flagValue, "[]"))
		if err != nil || !a.Is6() {
			return nil, fmt.Errorf("%w: --target6 %q is not [ADDR]:PORT, e.g. [2001:db8:113::10]:8000", errUsage, flagValue)
		}
		to = netip.AddrPortFrom(a, port)
	}
	t := &check.Target6{Internet: to.Addr()}
	if seenAs != "" {
		if t.Uplink, err = netip.ParseAddr(seenAs); err != nil || !t.Uplink.Is6() {
			return nil, fmt.Errorf("%w: --seen-as6 %q is not an IPv6 address", errUsage, seenAs)
		}
	} else if in.Host.NAT66 {
		ifc, err := net.InterfaceByName(in.Host.Uplink)
		if err != nil {
			return nil, fmt.Errorf("uplink %s: %w; name the NAT66 address with --seen-as6", in.Host.Uplink, err)
		}
		addrs, _ := ifc.Addrs() // none read is as none found: the error below says what to do
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is6() && p.Addr().IsGlobalUnicast() && !config.ULARange.Contains(p.Addr()) {
				t.Uplink = p.Addr()
				break
			}
		}
		if !t.Uplink.IsValid() {
			return nil, fmt.Errorf("uplink %s has no global IPv6 address; name the NAT66 address with --seen-as6", in.Host.Uplink)
		}
	}
	if to.Port() != port {
		return nil, fmt.Errorf("%w: --target6 must use the port of --target (%d): one server, two families", errUsage, port)
	}
	return t, nil
}

// uplinkAddr is the address the internet sees the VMs as.
func uplinkAddr(in *config.Infra, flagValue string) (netip.Addr, error) {
	if flagValue != "" {
		a, err := netip.ParseAddr(flagValue)
		if err != nil {
			return a, fmt.Errorf("%w: --seen-as %q is not an address", errUsage, flagValue)
		}
		return a, nil
	}
	ifc, err := net.InterfaceByName(in.Host.Uplink)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("uplink %s: %w; name the NAT address with --seen-as", in.Host.Uplink, err)
	}
	// No addresses read is as none found: the error below says what to do.
	addrs, _ := ifc.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("uplink %s has no IPv4 address; name the NAT address with --seen-as", in.Host.Uplink)
}

// dialAll logs in to every VM at once.
func dialAll(in *config.Infra, wait time.Duration) (map[string]*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	clients := map[string]*ssh.Client{}
	var failed []string
	for i := range in.VMs {
		vm := &in.VMs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := guest.Dial(ctx, in.Host, vm)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", vm.Name, err))
				return
			}
			clients[vm.Name] = c
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		return clients, fmt.Errorf("cannot log in to every VM (are they all up? microvm status):\n  %s", strings.Join(failed, "\n  "))
	}
	return clients, nil
}
