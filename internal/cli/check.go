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
	var target, seenAs string
	var wait time.Duration
	return &command{
		name:  "check",
		args:  "[-f FILE] --target ADDR:PORT [--seen-as ADDR] [--wait DURATION]",
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
by default the uplink's first IPv4 address. Every VM must be running.
Needs root (the admin key, and ICMP from the host).

Examples:
  sudo microvm check --target 203.0.113.10:8000
  sudo microvm check --target 203.0.113.10:8000 --seen-as 198.51.100.7`,
		flags: func(fs *pflag.FlagSet) {
			fs.StringVar(&target, "target", "", "the internet server ADDR:PORT that answers \"seen ADDR\"")
			fs.StringVar(&seenAs, "seen-as", "", "the address the target must see the VMs as (default: the uplink's address)")
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
			r := check.Run(in, p, check.Target{Internet: tgt.Addr(), Port: tgt.Port(), Uplink: uplink, HostSSH: []netip.Addr{uplink}})
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
