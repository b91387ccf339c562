package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/examples"
	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/egress"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// Where the demo keeps its image and VMs: apart from a host's real ones.
const (
	demoState = "/var/lib/microvm-demo"
	demoRun   = "/run/microvm-demo"
)

func demoCmd() *command {
	var keep, standIns bool
	return &command{
		name:  "demo",
		args:  "[-f FILE] [--stand-ins] [--keep]",
		short: "run the 4-VM setup in a throwaway sandbox and prove it works",
		long: `
Runs the seed's setup for real, in a sandbox of network namespaces: a host,
and an "internet" with a server on 203.0.113.10 and 2001:db8:113::10. It
applies the host part of infra.toml inside it exactly as "apply
--host-only" does on a real host, boots the 4 microVMs (building the Debian
image first if needed, a few minutes the first time), and proves the seed's
promises from inside the guests over SSH, with real TCP, UDP and ICMP
packets, over IPv4 and IPv6: each VM reaches the internet through NAT, no
VM reaches another VM, another VM's gateway or the host's SSH port, and the
host reaches every VM. Then it shuts the VMs down.

Nothing outside the sandbox is touched: not this machine's interfaces,
routes or firewall. The image and the VMs' disks live in ` + demoState + `,
apart from a real setup's. QEMU is the VMM (Cloud Hypervisor when
installed), with KVM where it works and emulation (TCG, slow) where not.

--stand-ins skips the VMs: a namespace per VM stands in for each guest,
and the proof takes seconds. Without -f the example built into the program
is used (the seed's 4 VMs, examples/infra.toml). Needs root, and
microvm-init beside microvm (make build).

Examples:
  sudo microvm demo
  sudo microvm demo --stand-ins --keep   keep the sandbox; Ctrl-C removes it`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&keep, "keep", false, "keep the sandbox until Ctrl-C, to explore it with ip netns exec")
			fs.BoolVar(&standIns, "stand-ins", false, "prove the network with namespaces standing in for the guests, without booting VMs")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			in, err := demoConfig(e)
			if err != nil {
				return err
			}
			return demo(e, in, standIns, keep)
		},
	}
}

// demoConfig reads -f when it was given, else the built-in example, and
// moves its state into the demo's own directories.
func demoConfig(e *env) (*config.Infra, error) {
	var in *config.Infra
	var err error
	if e.fileFlag != "" {
		in, err = e.load()
	} else {
		in, err = config.Parse("examples/infra.toml", examples.InfraTOML)
	}
	if err != nil {
		return nil, err
	}
	in.Relocate(demoState, demoRun)
	return in, nil
}

func demo(e *env, in *config.Infra, standIns, keep bool) error {
	w := e.stdout
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	from, file := in.File, ""
	if !standIns {
		var err error
		if in, file, err = demoPrepare(w, in); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "Building the sandbox from %s: %d VMs, uplink %s (this machine's own network is not touched)\n", from, len(in.VMs), in.Host.Uplink)
	sb, err := sandbox.New(in)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(w, "Removing the sandbox.")
		// Close removes every namespace it can and goes on; what stays
		// is named by `ip netns`, and leaving does not wait for it.
		_ = sb.Close()
	}()

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
	if err := sb.Serve(); err != nil {
		return err
	}
	// The resolver of the VMs with an egress list, as microvm host runs it
	// beside the firewall.
	var resolver *egress.Resolver
	err = sandbox.Do(sb.Host, func() error {
		vms, err := firewall.ReadEgress(in.Host)
		if err != nil || len(vms) == 0 {
			return err
		}
		if resolver, err = egress.New(func(format string, args ...any) { fmt.Fprintf(w, "  "+format+"\n", args...) }); err != nil {
			return err
		}
		return resolver.Set(vms)
	})
	if resolver != nil {
		defer resolver.Close()
	}
	if err != nil {
		return err
	}

	var prober check.Prober = sandbox.Prober{S: sb}
	if standIns {
		if err := sb.AddStandIns(); err != nil {
			return err
		}
	} else {
		vms, clients, err := demoBoot(w, in, file, sb)
		defer func() {
			fmt.Fprintln(w, "\nShutting the VMs down (as systemctl stop does):")
			for _, vm := range in.VMs {
				if v := vms[vm.Name]; v != nil {
					start := time.Now()
					if err := v.Stop(90 * time.Second); err != nil {
						fmt.Fprintf(w, "  %s: %v\n", vm.Name, err)
					} else {
						fmt.Fprintf(w, "  %s: clean shutdown in %s\n", vm.Name, time.Since(start).Round(100*time.Millisecond))
					}
				}
			}
		}()
		if err != nil {
			return err
		}
		prober = check.NewGuestProber(clients, prober, guest.Run)
	}

	where := "from inside the guests, over SSH"
	if standIns {
		where = "from namespaces standing in for the guests"
	}
	fmt.Fprintf(w, "\nProving the promises %s (TCP, UDP and ICMP; blocked means no answer):\n\n", where)
	r := check.Run(in, prober, sb.Target())
	r.Print(w)
	ok := r.OK()
	if ok {
		fmt.Fprintln(w, "\nAll promises hold, over IPv4 and IPv6: every VM reaches the internet through NAT, no VM reaches\nanother VM, another VM's gateway or the host's SSH, and the host reaches every VM.")
	}
	if keep {
		fmt.Fprintf(w, "\nThe sandbox stays until Ctrl-C. Look around, e.g.:\n  ip netns exec %s nft list table inet microvm\n  ip netns exec %s ip -br addr\n",
			sb.Host, sb.Host)
		if standIns {
			fmt.Fprintf(w, "  ip netns exec %s ping -c1 %s\n", sb.VMs[in.VMs[0].Name], sandbox.InternetAddr)
		} else {
			fmt.Fprintf(w, "  ip netns exec %s ssh -i %s root@%s\n", sb.Host, in.Host.AdminKey(), in.VMs[0].Addr)
		}
		<-sigs
	}
	if !ok {
		return fmt.Errorf("some promises do not hold (see the table above)")
	}
	return nil
}

// demoPrepare builds the image if needed, picks the VMM and accelerator
// this machine can run, writes the demo's model as the infra.toml its
// supervisors read and reads it back (config alone derives names and
// paths), and clears the VMs' disks for a fresh start. It returns the model
// read and its file.
func demoPrepare(w io.Writer, src *config.Infra) (*config.Infra, string, error) {
	img := src.VMs[0].Image
	if _, err := os.Stat(src.Host.ImageVmlinux(img)); err != nil {
		fmt.Fprintf(w, "Building image %s in %s (once; a few minutes):\n", img, src.Host.ImageDir(img))
		if err := image.Build(context.Background(), src.Host, img, indent{w}, image.Options{Boot: image.BootFiles}); err != nil {
			return nil, "", err
		}
	}
	// The image's kernel is what tells whether KVM runs guests here.
	accel := config.KVM
	if err := qemu.CheckKVM(src.Host.ImageVmlinux(img)); err != nil {
		accel = config.TCG
		fmt.Fprintf(w, "KVM does not work here (%v);\nthe guests run under emulation (TCG): booting takes a minute or two instead of seconds.\n", firstLine(err))
	}
	if err := os.MkdirAll(src.Host.RunDir, 0o755); err != nil {
		return nil, "", err
	}
	file := src.Host.DemoFile()
	if err := os.WriteFile(file, []byte(demoFile(src, accel)), 0o644); err != nil {
		return nil, "", err
	}
	in, err := config.Load(file)
	if err != nil {
		return nil, "", fmt.Errorf("reading the demo's model back: %w", err)
	}
	for _, vm := range in.VMs {
		if err := os.RemoveAll(vm.StateDir); err != nil {
			return nil, "", fmt.Errorf("clearing the demo's %s: %w", vm.Name, err)
		}
	}
	return in, file, nil
}

// demoBoot starts the VMs with `microvm run` on file, as systemd would,
// and logs in to each.
func demoBoot(w io.Writer, in *config.Infra, file string, sb *sandbox.Sandbox) (map[string]*sandbox.VM, map[string]*ssh.Client, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(w, "\nBooting %d microVMs (%s, accel %s), consoles in %s:\n", len(in.VMs), in.VMs[0].Hypervisor, in.Host.Accel, strings.Replace(in.VMs[0].ConsoleLog(), "/"+in.VMs[0].Name+"/", "/NAME/", 1))
	return sb.Boot(bin, file, in.Host.RunDir, 6*time.Minute, func(name string, after time.Duration) {
		fmt.Fprintf(w, "  %s: SSH ready %s after start\n", name, after.Round(100*time.Millisecond))
	})
}

// demoFile writes the demo's model as the infra.toml its supervisors read:
// the file it started from, with the demo's directories, accel, and a VMM
// this machine runs. Cloud Hypervisor needs KVM: without it, or without
// the program, one that emulates (QEMU). Emulated vCPUs are slow: one
// each, and less memory, keeps four guests bootable on a small machine.
func demoFile(in *config.Infra, accel config.Accel) string {
	var b strings.Builder
	h := in.Host
	fmt.Fprintf(&b, "# Written by microvm demo from %s.\n[host]\nuplink = %q\nstate_dir = %q\nrun_dir = %q\nuser = %q\naccel = %q\n",
		in.File, h.Uplink, h.StateDir, h.RunDir, h.User, accel)
	if h.IPv6 {
		// The prefix the file has or derives (from its own state_dir): the
		// VMs keep their IPv6 addresses in the demo's directories.
		fmt.Fprintf(&b, "ipv6_prefix = %q\n", h.IPv6Prefix)
	} else {
		b.WriteString("ipv6 = false\n")
	}
	for _, vm := range in.VMs {
		hv, vcpu, mem := vm.Hypervisor, vm.VCPU, vm.MemoryMiB
		if v, _ := vmm.Lookup(hv); !installed(v) || v.NeedsKVM && accel == config.TCG {
			hv = emulator()
		}
		if accel == config.TCG {
			vcpu, mem = 1, 512
		}
		fmt.Fprintf(&b, "\n[vm.%s]\nsubnet = %q\nvcpu = %d\nmemory = %d\nhypervisor = %q\nimage = %q\ndns = %q\n",
			vm.Name, vm.Subnet, vcpu, mem, hv, vm.Image, vm.DNS)
		if vm.HasEgress() {
			fmt.Fprintf(&b, "egress = [%s]\n", quotedList(config.EgressNames(vm.Egress)))
		}
	}
	return b.String()
}

// quotedList writes names as a TOML list's elements: "a", "b".
func quotedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// firstLine is the first line of err, for a one-line note.
func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// indent prefixes every line written with two spaces.
type indent struct{ w io.Writer }

func (i indent) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Fprintf(i.w, "  %s", line)
		}
	}
	return len(b), nil
}

// installed reports whether h's program is in PATH.
func installed(h vmm.Hypervisor) bool {
	_, err := exec.LookPath(h.Program)
	return err == nil
}

// emulator is the first hypervisor that runs guests without KVM.
func emulator() config.Hypervisor {
	for _, n := range vmm.Names() {
		if h, _ := vmm.Lookup(n); !h.NeedsKVM {
			return n
		}
	}
	return ""
}
