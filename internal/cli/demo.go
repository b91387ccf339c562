package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/simple-microvm-infra/microvm/examples"
	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

func demoCmd() *command {
	var keep bool
	return &command{
		name:  "demo",
		args:  "[-f FILE] [--keep]",
		short: "run the 4-VM setup in a throwaway sandbox and prove it works",
		long: `
Builds a sandbox of network namespaces (a host, an "internet" with a server
on 203.0.113.10, and one namespace per VM standing in for the guest), applies
the host part of infra.toml inside it exactly as "apply --host-only" does on
a real host, and proves the seed's promises with real TCP, UDP and ICMP
packets: each VM reaches the internet through NAT, no VM reaches another VM,
another VM's gateway or the host's SSH port, and the host reaches every VM.

Nothing outside the sandbox is touched: not this machine's interfaces,
routes or firewall. The sandbox is removed on exit. Needs root.

Without -f it uses the example file built into the program (the seed's 4
VMs, examples/infra.toml).

Examples:
  sudo microvm demo
  sudo microvm demo --keep     keep the sandbox to look around; Ctrl-C removes it`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&keep, "keep", false, "keep the sandbox until Ctrl-C, to explore it with ip netns exec")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := demoConfig(e)
			if err != nil {
				return err
			}
			return demo(e, in, keep)
		},
	}
}

// demoConfig reads -f when it was given, else the built-in example.
func demoConfig(e *env) (*config.Infra, error) {
	if e.file != "infra.toml" {
		return e.load()
	}
	if _, err := os.Stat(e.file); err == nil {
		return e.load()
	}
	return config.Parse("examples/infra.toml", examples.InfraTOML)
}

func demo(e *env, in *config.Infra, keep bool) error {
	w := e.stdout
	fmt.Fprintf(w, "Building the sandbox from %s: %d VMs, uplink %s (this machine's own network is not touched)\n", in.File, len(in.VMs), in.Host.Uplink)
	sb, err := sandbox.New(in)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(w, "Removing the sandbox.")
		sb.Close()
	}()
	// Ctrl-C or SIGTERM still removes the sandbox.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	fmt.Fprintf(w, "\nApplying the host part in namespace %s (microvm apply --host-only):\n", sb.Host)
	err = sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(indent{w})
	})
	if err != nil {
		return err
	}
	if err := sb.AddStandIns(); err != nil {
		return err
	}
	if err := sb.Serve(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nProving the promises with real packets (TCP, UDP and ICMP; blocked means no answer in %s):\n\n", sandbox.Timeout)
	r := check.Run(in, sandbox.Prober{S: sb}, sb.Target())
	r.Print(w)
	ok := r.OK()
	if ok {
		fmt.Fprintln(w, "\nAll promises hold: every VM reaches the internet through NAT, no VM reaches another VM,\nanother VM's gateway or the host's SSH, and the host reaches every VM.")
	}
	if keep {
		fmt.Fprintf(w, "\nThe sandbox stays until Ctrl-C. Look around, e.g.:\n  ip netns exec %s nft list table inet microvm\n  ip netns exec %s ip -br addr\n  ip netns exec %s ping -c1 %s\n",
			sb.Host, sb.Host, sb.VMs[in.VMs[0].Name], sandbox.InternetAddr)
		<-sigs
	}
	if !ok {
		return fmt.Errorf("some promises do not hold (see the table above)")
	}
	return nil
}

// indent prefixes every line written with two spaces.
type indent struct{ w io.Writer }

func (i indent) Write(b []byte) (int, error) {
	fmt.Fprintf(i.w, "  %s", b)
	return len(b), nil
}
