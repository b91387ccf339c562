// Package tailscale_test proves the design's external access path with real
// tailscaled daemons and real microVMs, all inside sandbox namespaces:
//
//	laptop ns: tailscaled ─┐                  ┌─ control server, DERP, STUN (203.0.113.10)
//	  eth0 198.51.100.2 ── lap0 198.51.100.1 : internet ns
//	host ns:   tailscaled, eth0 192.0.2.2 ── isp0 192.0.2.1 ┘
//	           br-ts1..4 (microvm apply) ── microVMs ts1..ts4 at 10.N.0.2 (QEMU)
//
// The control server is the tailscale.com module's own test server
// (testcontrol), the relay its DERP server; tailscaled is built from the
// same module. The program advertises the VM subnets through the host's
// tailscaled, the test approves them on the control server as a tailnet
// admin would, and the laptop then pings every VM and logs in to it with
// SSH through its tailnet, while no VM can open a connection to the
// laptop (probed from inside the guests).
//
// The VMs are called ts1..ts4, not vm1..vm4, so that their state under the
// shared test image's directory is not test/e2e's.
package tailscale_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"tailscale.com/ipn"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/cli"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The laptop's link to the simulated internet (RFC 5737 TEST-NET-2).
var (
	laptopAddr = netip.MustParsePrefix("198.51.100.2/24")
	laptopGW   = netip.MustParsePrefix("198.51.100.1/24")
)

// userRoute is a route the user advertises for reasons of their own; the
// program must keep it.
var userRoute = netip.MustParsePrefix("192.168.77.0/24")

// infraFile writes an infra.toml for the design's 4 VMs (3 when three is
// set), with their state in stateDir beside the test image, run files in
// runDir, and tailscaled's socket at socket. The file goes in dir.
func infraFile(t *testing.T, dir, stateDir, runDir, socket string, allowVMToTailnet, three bool) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\nipv6_prefix = %q\n\n", stateDir, runDir, ipv6Prefix)
	fmt.Fprintf(&b, "[host.tailscale]\nsocket = %q\nallow_vm_to_tailnet = %v\n\n", socket, allowVMToTailnet)
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n")
	n := 4
	if three {
		n = 3
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "\n[vm.ts%d]\nsubnet = \"10.%d.0.0/24\"\n", i, i)
	}
	name := fmt.Sprintf("infra-%v-%v.toml", allowVMToTailnet, three)
	f := filepath.Join(dir, name)
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// ipv6Prefix is where the VMs' IPv6 subnets come from: tsN's is
// fd00:7:0:N00::/64, advertised with its IPv4 subnet.
const ipv6Prefix = "fd00:7::/48"

// microvm runs the CLI in-process in the sandbox's host namespace.
func microvm(t *testing.T, ns string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	code := -1
	if err := sandbox.Do(ns, func() error { code = cli.Main(args, strings.NewReader(""), &out, &out); return nil }); err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("microvm %s: exit %d\n%s", strings.Join(args, " "), code, out.String())
	}
	return out.String()
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
	}
}

// routes is what the node advertises, as text.
func (n *node) routes(t *testing.T) string {
	t.Helper()
	p, err := n.lc.GetPrefs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, r := range p.AdvertiseRoutes {
		s = append(s, r.String())
	}
	return strings.Join(s, " ")
}

// status is `microvm status --host`'s Tailscale part, read in namespace ns.
func status(t *testing.T, ns string, in *config.Infra) *tailscale.Report {
	t.Helper()
	var r *tailscale.Report
	if err := sandbox.Do(ns, func() error { r = tailscale.Status(context.Background(), in); return nil }); err != nil {
		t.Fatal(err)
	}
	return r
}

// login logs in to vm with SSH from namespace ns, as a person on the
// laptop does (ssh root@10.1.0.2), and returns the address the VM sees the
// connection come from.
func login(ns string, in *config.Infra, vm *config.VM) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c *ssh.Client
	err := sandbox.Do(ns, func() error {
		var err error
		c, err = guest.Dial(ctx, in.Host, vm)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("ssh root@%s: %w", vm.Addr, err)
	}
	defer c.Close()
	out, code, err := guest.Run(c, "echo $SSH_CLIENT")
	if err != nil || code != 0 {
		return "", fmt.Errorf("ssh root@%s echo $SSH_CLIENT: exit %d %s %v", vm.Addr, code, out, err)
	}
	return strings.Fields(out + " ?")[0], nil
}

func TestSubnetRoutes(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "useradd", "qemu-system-x86_64")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Unavailable(t, "needs /dev/net/tun for tailscaled's TUN interface")
	}
	image := imagetest.Debian(t)
	bin := tailscaled(t)
	microvmBin := testenv.Binaries(t)
	start := time.Now()

	dir := t.TempDir()
	hostDir, laptopDir := filepath.Join(dir, "hypervisor"), filepath.Join(dir, "laptop")
	socket := filepath.Join(hostDir, "tailscaled.sock")
	runDir := testenv.RunDir(t, "mvts")
	infra := func(allowVMToTailnet, three bool) string {
		return infraFile(t, dir, image.StateDir, runDir, socket, allowVMToTailnet, three)
	}
	file := infra(false, false)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	// Every run starts from fresh VM state; the image is shared.
	for _, vm := range in.VMs {
		if err := storage.RemoveState(vm.StateDir); err != nil {
			t.Fatal(err)
		}
	}
	sb := sandboxtest.New(t, in)

	// The laptop is another machine on the internet.
	laptopNS := testenv.NetNS(t)
	ipCmd(t, "-n", sb.Internet, "link", "add", "lap0", "type", "veth", "peer", "name", "eth0", "netns", laptopNS)
	ipCmd(t, "-n", sb.Internet, "addr", "add", laptopGW.String(), "dev", "lap0")
	ipCmd(t, "-n", sb.Internet, "link", "set", "lap0", "up")
	ipCmd(t, "-n", laptopNS, "addr", "add", laptopAddr.String(), "dev", "eth0")
	ipCmd(t, "-n", laptopNS, "link", "set", "eth0", "up")
	ipCmd(t, "-n", laptopNS, "link", "set", "lo", "up")
	ipCmd(t, "-n", laptopNS, "route", "add", "default", "via", laptopGW.Addr().String())

	ctl := startControl(t, sb.Internet, sandbox.InternetAddr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control server log (last 4 KiB):\n%s", tail([]byte(ctl.log.String()), 4096))
		}
	})
	host := startTailscaled(t, bin, "hypervisor", sb.Host, hostDir)
	laptop := startTailscaled(t, bin, "laptop", laptopNS, laptopDir)
	ctx := context.Background()
	if _, err := host.lc.EditPrefs(ctx, &ipn.MaskedPrefs{Prefs: ipn.Prefs{AdvertiseRoutes: []netip.Prefix{userRoute}}, AdvertiseRoutesSet: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("tailscaled running in both namespaces after %s", time.Since(start).Round(time.Millisecond))

	v4, v6 := "10.1.0.0/24,10.2.0.0/24,10.3.0.0/24,10.4.0.0/24", "fd00:7:0:100::/64,fd00:7:0:200::/64,fd00:7:0:300::/64,fd00:7:0:400::/64"
	vmRoutes := strings.ReplaceAll(v4+","+v6, ",", " ")
	must := func(ok bool) {
		if !ok {
			t.FailNow()
		}
	}

	must(t.Run("apply while logged out", func(t *testing.T) {
		out := microvm(t, sb.Host, "apply", "--host-only", "-f", file)
		t.Logf("microvm apply, tailscaled logged out:\n%s", out)
		for _, want := range []string{
			"warning: tailscaled is logged out (state NeedsLogin): tailscaled keeps the routes",
			"tailscale up --advertise-routes=192.168.77.0/24," + v4 + "," + v6,
			"Edit route settings",
			"ip link add br-ts4 group 7173741 type bridge", // the rest of the work is done
			"tailscale --socket=" + socket + " set --advertise-routes=192.168.77.0/24," + v4 + "," + v6 + "  # advertise the VM subnets",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("apply output lacks %q:\n%s", want, out)
			}
		}
		if got, want := host.routes(t), userRoute.String()+" "+vmRoutes; got != want {
			t.Errorf("advertised: got %q, want %q", got, want)
		}
	}))

	// The microVMs, on the bridges apply made, all booting at once; and a
	// server on the laptop, for the VMs to try to reach.
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.Serve(laptopNS, sandbox.Port); err != nil {
		t.Fatal(err)
	}
	vms, clients := sandboxtest.Boot(t, sb, in, microvmBin, file, t.TempDir())
	// Probes from inside the guests, over SSH from the host.
	guests := check.NewGuestProber(clients, sandbox.Prober{S: sb}, guest.Run)

	host.up(t, ctl.URL, false)
	laptop.up(t, ctl.URL, true) // --accept-routes: Linux clients do not use subnet routes without it
	t.Logf("both nodes logged in after %s", time.Since(start).Round(time.Millisecond))

	must(t.Run("plan after login", func(t *testing.T) {
		// Routes in place and waiting for approval is not a change.
		if got := testenv.WithoutDiskWarning(microvm(t, sb.Host, "plan", "--host-only", "-f", file)); got != "no changes\n" {
			t.Errorf("plan: got %q, want no changes", got)
		}
		r := status(t, sb.Host, in)
		var b strings.Builder
		r.Print(&b)
		t.Logf("status before approval:\n%s", b.String())
		for _, rt := range r.Routes {
			if !rt.Advertised || rt.Approved {
				t.Errorf("%s: advertised %v approved %v, want advertised and not approved", rt.Subnet, rt.Advertised, rt.Approved)
			}
		}
		if !slices.Equal(r.Others, []netip.Prefix{userRoute}) {
			t.Errorf("other routes: got %v, want %v", r.Others, userRoute)
		}
		if !strings.Contains(b.String(), "To approve "+v4+","+v6+": approve the routes in the Tailscale admin console (Machines → hypervisor → Edit route settings)") {
			t.Errorf("status does not say how to approve:\n%s", b.String())
		}
		// Unapproved routes carry nothing: the laptop has no way to the
		// VMs but the tailnet, which the approval below opens.
		if r := sandbox.TCP(laptopNS, netip.AddrPortFrom(in.VMs[0].Addr, 22)); r.Reached {
			t.Errorf("the laptop reaches ts1's sshd before the routes are approved")
		}
	}))

	// Approve the VM subnets on the control server, as the tailnet's admin
	// does in the admin console. The user's own route stays unapproved.
	st, err := host.lc.StatusWithoutPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ctl.SetSubnetRoutes(st.Self.PublicKey, subnetsOf(in))
	waitFor(t, 30*time.Second, "the approval to reach the host", func() error {
		r := status(t, sb.Host, in)
		if !r.OK() {
			var b strings.Builder
			r.Print(&b)
			return fmt.Errorf("status:\n%s", b.String())
		}
		return nil
	})
	// The command itself prints the same report under the VM table.
	out := microvm(t, sb.Host, "status", "--host", "-f", file)
	t.Logf("microvm status --host after approval:\n%s", out)
	if !strings.Contains(out, "disk: images") {
		t.Error("status --host lacks the disk totals")
	}
	for _, want := range []string{"10.1.0.0/24 ts1 yes yes", "10.4.0.0/24 ts4 yes yes", "fd00:7:0:100::/64 ts1 yes yes", "fd00:7:0:400::/64 ts4 yes yes"} {
		found := false
		for _, line := range strings.Split(out, "\n") {
			found = found || strings.Join(strings.Fields(line), " ") == want
		}
		if !found {
			t.Errorf("status --host lacks the route %q", want)
		}
	}
	waitFor(t, 30*time.Second, "the laptop to learn the routes", func() error {
		st, err := laptop.lc.Status(ctx)
		if err != nil {
			return err
		}
		for _, p := range st.Peer {
			if p.HostName == "hypervisor" && p.PrimaryRoutes != nil && p.PrimaryRoutes.Len() == 8 {
				return nil
			}
		}
		return fmt.Errorf("no peer hypervisor with 8 primary routes (each VM's IPv4 and IPv6)")
	})

	laptopIP := laptop.addr(t)
	hostIP := host.addr(t)

	t.Run("the laptop reaches every VM", func(t *testing.T) {
		for i := range in.VMs {
			vm := &in.VMs[i]
			// The first packets wait for the DERP path to be set up.
			waitFor(t, 30*time.Second, "ping from the laptop to "+vm.Name, func() error {
				return sandbox.Ping(laptopNS, vm.Addr).Err
			})
			seen, err := login(laptopNS, in, vm)
			if err != nil {
				t.Errorf("from the laptop: %v", err)
				continue
			}
			// tailscaled masquerades subnet-routed traffic by default
			// (--snat-subnet-routes): the VM sees its gateway.
			if seen != vm.Gateway.String() {
				t.Errorf("%s saw the laptop as %s, want its gateway %s (tailscaled's SNAT)", vm.Name, seen, vm.Gateway)
			}
			t.Logf("laptop → %s %s: ping ok, ssh ok, the VM sees the laptop as %s", vm.Name, vm.Addr, seen)
		}
	})

	t.Run("the program's ip rules come before tailscaled's", func(t *testing.T) {
		// A VM's packets meet the program's rules first (policy routing,
		// the second layer between VMs); what its table does not hold,
		// such as a reply to a tailnet client, falls through to
		// tailscaled's table 52, as the subtests around this one use.
		out, _ := sandbox.Command(sb.Host, "ip", "rule").Output()
		rules := string(out)
		ours, theirs := strings.Index(rules, fmt.Sprintf("lookup %d", config.RouteTable)), strings.Index(rules, "lookup 52")
		if ours < 0 || theirs < 0 || ours > theirs {
			t.Errorf("ip rule: want the program's rules (lookup %d), then tailscaled's (lookup 52):\n%s", config.RouteTable, rules)
		}
		// The same for IPv6, where tailscaled has rules of its own.
		out, _ = sandbox.Command(sb.Host, "ip", "-6", "rule").Output()
		rules = string(out)
		ours, theirs = strings.Index(rules, fmt.Sprintf("lookup %d", config.RouteTable)), strings.Index(rules, "lookup 52")
		if ours < 0 || theirs >= 0 && ours > theirs {
			t.Errorf("ip -6 rule: want the program's rules (lookup %d), before any of tailscaled's (lookup 52):\n%s", config.RouteTable, rules)
		}
	})

	t.Run("without tailscaled's SNAT, replies still pass", func(t *testing.T) {
		// With --snat-subnet-routes=false the VM sees the laptop's tailnet
		// address and answers through tailscale0: a reply, which the
		// firewall lets out while it blocks new connections.
		setNoSNAT := func(on bool) {
			if _, err := host.lc.EditPrefs(ctx, &ipn.MaskedPrefs{Prefs: ipn.Prefs{NoSNAT: on}, NoSNATSet: true}); err != nil {
				t.Fatal(err)
			}
		}
		setNoSNAT(true)
		defer setNoSNAT(false)
		waitFor(t, 30*time.Second, "ssh from the laptop to ts1 without SNAT", func() error {
			seen, err := login(laptopNS, in, &in.VMs[0])
			if err == nil && seen != laptopIP.String() {
				err = fmt.Errorf("ts1 saw the laptop as %s, want its tailnet address %s", seen, laptopIP)
			}
			return err
		})
	})

	t.Run("no VM reaches the laptop", func(t *testing.T) {
		for _, ip := range []netip.Addr{laptopIP, laptop.addr6(t)} {
			to := netip.AddrPortFrom(ip, sandbox.Port)
			// The host itself reaches the laptop's server: only the
			// firewall stands between a VM and it.
			if r := sandbox.TCP(sb.Host, to); !r.Reached {
				t.Fatalf("the host cannot reach the laptop's tailnet address %s: %v", to, r.Err)
			}
			results := probeAll(in, func(vm config.VM) []string {
				var open []string
				if r := guests.TCP(vm.Name, to); r.Reached {
					open = append(open, "tcp")
				}
				if r := guests.Ping(vm.Name, ip); r.Reached {
					open = append(open, "icmp")
				}
				return open
			})
			for name, open := range results {
				if len(open) > 0 {
					t.Errorf("%s reached the laptop's tailnet address %s by %s", name, ip, strings.Join(open, ","))
				}
			}
		}
	})

	t.Run("the promises hold beside tailscaled's own firewall rules", func(t *testing.T) {
		sandboxtest.Promises(t, sb, in, guests)
	})

	t.Run("allow_vm_to_tailnet", func(t *testing.T) {
		open := infra(true, false)
		out := microvm(t, sb.Host, "apply", "--host-only", "-f", open)
		if !strings.Contains(out, "update table inet microvm") || strings.Contains(out, "tailscale set") {
			t.Errorf("apply with allow_vm_to_tailnet: want only a firewall update:\n%s", out)
		}
		to := netip.AddrPortFrom(laptopIP, sandbox.Port)
		r := guests.TCP("ts1", to)
		if !r.Reached {
			t.Errorf("with allow_vm_to_tailnet, ts1 cannot reach the laptop: %v", r.Err)
		} else if r.SeenAs != hostIP.String() {
			t.Errorf("the laptop saw ts1 as %s, want the host's tailnet address %s", r.SeenAs, hostIP)
		}
		// Isolation between VMs does not depend on the setting.
		for _, other := range in.VMs[1:] {
			if r := guests.TCP("ts1", netip.AddrPortFrom(other.Addr, 22)); r.Reached {
				t.Errorf("with allow_vm_to_tailnet, ts1 reaches %s's sshd", other.Name)
			}
		}
		microvm(t, sb.Host, "apply", "--host-only", "-f", file)
		if r := guests.TCP("ts1", to); r.Reached {
			t.Errorf("after turning allow_vm_to_tailnet off, ts1 still reaches the laptop")
		}
	})

	t.Run("a removed VM's route is withdrawn", func(t *testing.T) {
		// As apply would, stop ts4 before its network goes.
		if err := vms["ts4"].Stop(60 * time.Second); err != nil {
			t.Fatalf("stopping ts4: %v", err)
		}
		delete(vms, "ts4")
		three := infra(false, true)
		out := testenv.WithoutDiskWarning(microvm(t, sb.Host, "apply", "--host-only", "-f", three))
		lines := strings.Split(out, "\n")
		if want := "tailscale --socket=" + socket + " set --advertise-routes=192.168.77.0/24,10.1.0.0/24,10.2.0.0/24,10.3.0.0/24,fd00:7:0:100::/64,fd00:7:0:200::/64,fd00:7:0:300::/64  # withdraw 10.4.0.0/24,fd00:7:0:400::/64"; !strings.HasPrefix(lines[0], want) {
			t.Errorf("apply without ts4: first line %q, want it to start with %q\n%s", lines[0], want, out)
		}
		if got, want := host.routes(t), "192.168.77.0/24 10.1.0.0/24 10.2.0.0/24 10.3.0.0/24 fd00:7:0:100::/64 fd00:7:0:200::/64 fd00:7:0:300::/64"; got != want {
			t.Errorf("advertised after removing ts4: got %q, want %q", got, want)
		}
		if got := testenv.WithoutDiskWarning(microvm(t, sb.Host, "plan", "--host-only", "-f", three)); got != "no changes\n" {
			t.Errorf("plan after removal: got %q", got)
		}
		microvm(t, sb.Host, "apply", "--host-only", "-f", file)
		// ts4's subnets come back last, as added routes do.
		if got, want := host.routes(t), "192.168.77.0/24 10.1.0.0/24 10.2.0.0/24 10.3.0.0/24 fd00:7:0:100::/64 fd00:7:0:200::/64 fd00:7:0:300::/64 10.4.0.0/24 fd00:7:0:400::/64"; got != want {
			t.Errorf("advertised after adding ts4 back: got %q, want %q", got, want)
		}
	})
	t.Logf("whole test after the build: %s", time.Since(start).Round(time.Millisecond))
}

func subnetsOf(in *config.Infra) []netip.Prefix {
	var out []netip.Prefix
	for _, vm := range in.VMs {
		out = append(out, vm.Subnets()...)
	}
	return out
}

// probeAll runs f for every VM at once: blocked probes wait for their
// timeout, so one VM at a time would be slow.
func probeAll(in *config.Infra, f func(config.VM) []string) map[string][]string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string][]string{}
	for _, vm := range in.VMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f(vm)
			mu.Lock()
			out[vm.Name] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
