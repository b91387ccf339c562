package cli

// Tier 2: the real CLI applied inside sandbox namespaces, proven with real
// packets. Nothing here touches the machine's own network namespace.

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

const example = "../../examples/infra.toml"

// run runs the CLI in namespace ns, with nothing on stdin, and returns its
// output and exit status.
func run(t *testing.T, ns string, args ...string) (string, int) {
	t.Helper()
	return runWith(t, ns, "", args...)
}

// runWith is run with stdin.
func runWith(t *testing.T, ns, stdin string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := -1
	err := sandbox.Do(ns, func() error {
		code = Main(args, strings.NewReader(stdin), &out, &out)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

// mustRun is run, failing the test on a non-zero exit.
func mustRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, code := run(t, ns, args...)
	if code != 0 {
		t.Fatalf("microvm %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func newSandbox(t *testing.T, file string) (*sandbox.Sandbox, *config.Infra) {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "useradd")
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, in)
	return sb, in
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "infra.toml")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestHostApply applies the design's 4-VM network and proves every promise.
func TestHostApply(t *testing.T) {
	sb, in := newSandbox(t, example)
	// The VM users are machine-wide; make them exist so the plan is the
	// same on every run.
	addUsers(t, in)

	t.Run("plan", func(t *testing.T) {
		testenv.Golden(t, "plan-fresh.golden", testenv.WithoutDiskWarning(mustRun(t, sb.Host, "plan", "--host-only", "-f", example)))
	})
	t.Run("apply", func(t *testing.T) {
		out := mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
		if !strings.Contains(out, "ip link add br-vm4 group 7173741 type bridge") {
			t.Errorf("apply output lacks the bridges:\n%s", out)
		}
	})
	t.Run("taps", func(t *testing.T) {
		// Read back with iproute2, not the program's own netlink code.
		for _, vm := range in.VMs {
			out, _ := sandbox.Command(sb.Host, "ip", "-d", "link", "show", vm.TAP).Output()
			for _, want := range []string{"master " + vm.Bridge, "tun type tap pi off vnet_hdr on multi_queue", "persist on user " + vm.User + " group " + vm.User, "alias microvm:" + vm.Name} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s lacks %q:\n%s", vm.TAP, want, out)
				}
			}
		}
		for _, vm := range in.VMs {
			out, _ := sandbox.Command(sb.Host, "ip", "-d", "link", "show", vm.Bridge).Output()
			for _, want := range []string{fmt.Sprintf("group %d", config.LinkGroup), "alias microvm:" + vm.Name} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s lacks %q:\n%s", vm.Bridge, want, out)
				}
			}
		}
		fwd, _ := sandbox.Command(sb.Host, "sysctl", "-n", "net.ipv4.ip_forward").Output()
		if strings.TrimSpace(string(fwd)) != "1" {
			t.Errorf("ip_forward = %q, want 1", fwd)
		}
	})
	t.Run("idempotent", func(t *testing.T) {
		if got := testenv.WithoutDiskWarning(mustRun(t, sb.Host, "plan", "--host-only", "-f", example)); got != "no changes\n" {
			t.Errorf("second plan: got %q, want no changes", got)
		}
		if got := testenv.WithoutDiskWarning(mustRun(t, sb.Host, "apply", "--host-only", "-f", example)); got != "no changes\n" {
			t.Errorf("second apply: got %q, want no changes", got)
		}
	})

	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Run("promises", func(t *testing.T) {
		r := check.Run(in, sandbox.Prober{S: sb}, sb.Target())
		var b bytes.Buffer
		r.Print(&b)
		t.Logf("measured with stand-ins:\n%s", b.String())
		if !r.OK() {
			t.Errorf("promises broken:\n%s", b.String())
		}
		// The matrix covers all 12 ordered pairs, each over TCP, UDP and
		// ICMP, over IPv4 and IPv6; each VM has an IPv6 row.
		pairs := 0
		for _, suffix := range []string{"", check.Suffix6} {
			for _, from := range in.VMs {
				for _, to := range in.VMs {
					if from.Name != to.Name && r.Cells[from.Name+suffix][to.Name].Text == "blocked" {
						pairs++
					}
				}
			}
		}
		if pairs != 24 {
			t.Errorf("got %d blocked ordered pairs, want 12 for each of IPv4 and IPv6:\n%s", pairs, b.String())
		}
		if got, want := r.Cells["vm1"+check.Suffix6]["internet"].Text, "ok, seen as "+sandbox.UplinkAddr6.Addr().String(); got != want {
			t.Errorf("vm1's IPv6 internet: %q, want %q (NAT66)", got, want)
		}
	})
	t.Run("anti-spoofing", func(t *testing.T) { antiSpoofing(t, sb, in) })
	t.Run("check can fail", func(t *testing.T) {
		// Without the program's table the same probes must see the breach;
		// apply then repairs it. VMs stay apart without the table (policy
		// routing, the second layer); without both layers, every probe
		// kind must see the open path between two VMs, or "blocked" above
		// would prove nothing.
		if out, err := sandbox.Command(sb.Host, "nft", "delete", "table", "inet", "microvm").CombinedOutput(); err != nil {
			t.Fatalf("%s %v", out, err)
		}
		r := check.Run(in, sandbox.Prober{S: sb}, sb.Target())
		var b bytes.Buffer
		r.Print(&b)
		if r.OK() || r.Cells["vm1"]["internet"].OK || r.Cells["vm1"]["host ssh"].OK || r.Cells["vm1"+check.Suffix6]["internet"].OK {
			t.Errorf("with the firewall gone, check still passes:\n%s", b.String())
		}
		for _, from := range []string{"vm1", "vm1" + check.Suffix6} {
			if !r.Cells[from]["vm2"].OK {
				t.Errorf("with the firewall gone, %s reaches vm2: policy routing does not hold:\n%s", from, b.String())
			}
		}
		for _, vm := range in.VMs {
			for _, family := range []string{"-4", "-6"} {
				if out, err := sandbox.Command(sb.Host, "ip", family, "rule", "del", "priority", fmt.Sprint(config.RulePrefIsolation), "iif", vm.Bridge).CombinedOutput(); err != nil {
					t.Fatalf("%s %v", out, err)
				}
			}
		}
		r = check.Run(in, sandbox.Prober{S: sb}, sb.Target())
		for _, from := range []string{"vm1", "vm1" + check.Suffix6} {
			if r.Cells[from]["vm2"].Text != "REACHED (icmp,tcp,udp)" {
				b.Reset()
				r.Print(&b)
				t.Errorf("with the firewall and the policy routing gone, %s -> vm2 is %q, want REACHED (icmp,tcp,udp):\n%s", from, r.Cells[from]["vm2"].Text, b.String())
			}
		}
		mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
		if r := check.Run(in, sandbox.Prober{S: sb}, sb.Target()); !r.OK() {
			t.Error("apply did not repair the firewall and the routing")
		}
	})
	t.Run("removal", func(t *testing.T) { removal(t, sb) })
}

// antiSpoofing sends from vm1's stand-in with addresses and a MAC that are
// not vm1's, over IPv4 and IPv6: the internet server must see none of it,
// and the gateway answers no ping from a link-local address not vm1's.
func antiSpoofing(t *testing.T, sb *sandbox.Sandbox, in *config.Infra) {
	vm1, _ := in.VM("vm1")
	vm2, _ := in.VM("vm2")
	ns := sb.VMs["vm1"]
	internet, internet6 := sb.Target().Internet, sb.Target().IPv6.Internet
	ipn := func(args ...string) {
		t.Helper()
		if out, err := sandbox.Command(ns, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
		}
	}
	other6 := netip.PrefixFrom(vm1.Subnet6.Addr().Next().Next().Next(), 64) // ::3, in vm1's own /64
	tests := []struct {
		name  string
		setup []string // ip command run in vm1's namespace
		undo  []string
		from  string
	}{
		{"other address in own subnet", []string{"addr", "add", "10.1.0.99/24", "dev", "eth0"}, []string{"addr", "del", "10.1.0.99/24", "dev", "eth0"}, "10.1.0.99"},
		{"vm2's address", []string{"addr", "add", "10.2.0.2/32", "dev", "eth0"}, []string{"addr", "del", "10.2.0.2/32", "dev", "eth0"}, "10.2.0.2"},
		{"foreign MAC", []string{"link", "set", "eth0", "address", "02:00:00:00:00:99"}, []string{"link", "set", "eth0", "address", vm1.MAC.String()}, vm1.Addr.String()},
		{"other IPv6 address in own /64", []string{"addr", "add", other6.String(), "dev", "eth0", "nodad"}, []string{"addr", "del", other6.String(), "dev", "eth0"}, other6.Addr().String()},
		{"vm2's IPv6 address", []string{"addr", "add", vm2.Addr6.String() + "/128", "dev", "eth0", "nodad"}, []string{"addr", "del", vm2.Addr6.String() + "/128", "dev", "eth0"}, vm2.Addr6.String()},
		{"foreign MAC, IPv6", []string{"link", "set", "eth0", "address", "02:00:00:00:00:99"}, []string{"link", "set", "eth0", "address", vm1.MAC.String()}, vm1.Addr6.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ipn(tt.setup...)
			defer ipn(tt.undo...)
			// Neighbours cache the old MAC; flush so the new one is used.
			sandbox.Command(sb.Host, "ip", "neigh", "flush", "dev", vm1.Bridge).Run()
			from := netip.MustParseAddr(tt.from)
			to := netip.AddrPortFrom(internet, sandbox.Port)
			if from.Is6() {
				to = netip.AddrPortFrom(internet6, sandbox.Port)
			}
			if r := sandbox.TCPFrom(ns, from, to); r.Reached {
				t.Errorf("spoofed packet from %s reached the internet (seen as %s)", tt.from, r.SeenAs)
			}
		})
	}
	// A link-local address is vm1's only if the kernel made it of vm1's
	// MAC: from another, the gateway answers no ping.
	ping := func(from string) bool {
		return sandbox.Command(ns, "ping", "-6", "-c1", "-W2", "-I", from+"%eth0", vm1.Gateway6.String()).Run() == nil
	}
	t.Run("other link-local address", func(t *testing.T) {
		ipn("addr", "add", "fe80::99/64", "dev", "eth0", "nodad")
		defer ipn("addr", "del", "fe80::99/64", "dev", "eth0")
		if ping("fe80::99") {
			t.Error("the gateway answered a ping from fe80::99, not vm1's link-local address")
		}
	})
	// And the real addresses still work, so the probes above can succeed.
	sandbox.Command(sb.Host, "ip", "neigh", "flush", "dev", vm1.Bridge).Run()
	if r := sandbox.TCPFrom(ns, vm1.Addr, netip.AddrPortFrom(internet, sandbox.Port)); !r.Reached {
		t.Errorf("vm1's own address no longer reaches the internet: %v", r.Err)
	}
	if r := sandbox.TCPFrom(ns, vm1.Addr6, netip.AddrPortFrom(internet6, sandbox.Port)); !r.Reached {
		t.Errorf("vm1's own IPv6 address no longer reaches the internet: %v", r.Err)
	}
	if !ping(vm1.LinkLocal6.String()) {
		t.Errorf("the gateway answers no ping from vm1's own link-local address %s", vm1.LinkLocal6)
	}
}

// removal drops vm4 from the file: its bridge, TAP and rules go, the rest
// stays, and adding it back restores it.
func removal(t *testing.T, sb *sandbox.Sandbox) {
	src, _ := os.ReadFile(example)
	three := writeFile(t, strings.Split(string(src), "[vm.vm4]")[0])
	out := mustRun(t, sb.Host, "apply", "--host-only", "-f", three)
	for _, want := range []string{"ip link del vm-vm4", "ip link del br-vm4", "update table inet microvm"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply without vm4: output lacks %q:\n%s", want, out)
		}
	}
	links, _ := sandbox.Command(sb.Host, "ip", "-br", "link").Output()
	if strings.Contains(string(links), "br-vm4") || !strings.Contains(string(links), "br-vm3") {
		t.Errorf("links after removal:\n%s", links)
	}
	rules, _ := sandbox.Command(sb.Host, "nft", "list", "set", "inet", "microvm", "vm_bridges").Output()
	if strings.Contains(string(rules), "br-vm4") {
		t.Errorf("vm4 is still in the firewall:\n%s", rules)
	}
	if got := testenv.WithoutDiskWarning(mustRun(t, sb.Host, "plan", "--host-only", "-f", three)); got != "no changes\n" {
		t.Errorf("plan after removal: got %q", got)
	}
	mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
	if got := testenv.WithoutDiskWarning(mustRun(t, sb.Host, "plan", "--host-only", "-f", example)); got != "no changes\n" {
		t.Errorf("plan after adding vm4 back: got %q", got)
	}
}

// TestDemo runs `microvm demo` as a newcomer would.
func TestDemo(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "useradd")
	out, errOut, code := mainOut("demo", "--stand-ins")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"vm1        ok, seen as 192.0.2.2      -        blocked  blocked  blocked",
		"vm1 ipv6   ok, seen as 2001:db8:2::2  -        blocked  blocked  blocked",
		"All promises hold", "Removing the sandbox.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestKilledApply kills apply after each of its steps in turn; the next apply
// must finish the job so that plan then says "no changes".
func TestKilledApply(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "go")
	bin := filepath.Join(t.TempDir(), "microvm")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/microvm").CombinedOutput(); err != nil {
		t.Fatalf("building microvm: %s %v", out, err)
	}
	in, _ := config.Load(example)
	addUsers(t, in)

	steps := 0
	for kill := 1; ; kill++ {
		ns := testenv.NetNS(t)
		ipExec(t, ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
		ipExec(t, ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")

		cmd := sandbox.Command(ns, bin, "apply", "--host-only", "-f", example)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines, killed := 0, false
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines++
			if lines == kill {
				// ip netns exec execs microvm in place, so this is apply.
				syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
				killed = true
				break
			}
		}
		cmd.Wait()
		if !killed {
			steps = lines
			break
		}
		if out, err := sandbox.Command(ns, bin, "apply", "--host-only", "-f", example).CombinedOutput(); err != nil {
			t.Fatalf("apply after a kill at step %d: %s %v", kill, out, err)
		}
		if out, _ := sandbox.Command(ns, bin, "plan", "--host-only", "-f", example).CombinedOutput(); testenv.WithoutDiskWarning(string(out)) != "no changes\n" {
			t.Errorf("killed at step %d: after a second apply, plan says:\n%s", kill, out)
		}
	}
	if steps < 20 {
		t.Errorf("an uninterrupted apply printed %d steps; the test covered too few kill points", steps)
	}
}

// TestOtherFirewallUntouched: a host firewall that would drop VM traffic is
// reported, never changed.
func TestOtherFirewallUntouched(t *testing.T) {
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	ipExec(t, ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
	ipExec(t, ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	docker := "table ip filter {\n chain FORWARD {\n  type filter hook forward priority 0; policy drop;\n  iifname \"docker0\" accept\n }\n}\n"
	cmd := sandbox.Command(ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(docker)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	before, _ := sandbox.Command(ns, "nft", "list", "table", "ip", "filter").Output()
	for _, args := range [][]string{{"plan", "--host-only", "-f", example}, {"apply", "--host-only", "-f", example}} {
		out := mustRun(t, ns, args...)
		if !strings.Contains(out, "warning: nftables chain ip filter FORWARD has policy drop") {
			t.Errorf("%s does not warn about the FORWARD policy:\n%s", args[0], out)
		}
	}
	after, _ := sandbox.Command(ns, "nft", "list", "table", "ip", "filter").Output()
	if !bytes.Equal(before, after) {
		t.Errorf("apply changed a table it does not own:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestHostChecks: problems only the host can reveal get a file:line error
// and change nothing.
func TestHostChecks(t *testing.T) {
	ns := testenv.NetNS(t)
	ipExec(t, ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
	ipExec(t, ns, "addr", "add", "10.2.0.5/16", "dev", "eth0")
	ipExec(t, ns, "link", "set", "eth0", "up")
	ipExec(t, ns, "link", "add", "docker0", "type", "bridge")
	ipExec(t, ns, "addr", "add", "172.17.0.1/16", "dev", "docker0")
	ipExec(t, ns, "route", "add", "10.50.0.0/16", "via", "10.2.0.1", "dev", "eth0")
	// As tailscaled adds a route another node advertises, in its table.
	ipExec(t, ns, "route", "add", "192.168.200.0/24", "dev", "eth0", "table", "52")
	tests := []struct{ name, file, want string }{
		{"missing uplink", "[host]\nuplink = \"wan0\"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n",
			`infra.toml:2:1: uplink "wan0" does not exist on this host`},
		{"subnet overlaps uplink", "[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"10.2.3.0/24\"\n",
			"infra.toml:4:1: vm.vm1.subnet 10.2.3.0/24 overlaps 10.2.0.0/16, a network this host already has (address 10.2.0.5/16 on eth0)"},
		{"subnet overlaps another link's address", "[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"172.17.5.0/24\"\n",
			"infra.toml:4:1: vm.vm1.subnet 172.17.5.0/24 overlaps 172.17.0.0/16, a network this host already has (address 172.17.0.1/16 on docker0)"},
		{"subnet overlaps a route", "[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"10.50.1.0/24\"\n",
			"infra.toml:4:1: vm.vm1.subnet 10.50.1.0/24 overlaps 10.50.0.0/16, a network this host already has (a route via eth0 to 10.50.0.0/16)"},
		{"subnet overlaps a route in another table", "[host]\nuplink = \"eth0\"\n[vm.vm1]\nsubnet = \"192.168.200.0/24\"\n",
			"infra.toml:4:1: vm.vm1.subnet 192.168.200.0/24 overlaps 192.168.200.0/24, a network this host already has (a route via eth0 in table 52 to 192.168.200.0/24)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeFile(t, tt.file)
			out, code := run(t, ns, "apply", "--host-only", "-f", f)
			if code != 1 || !strings.Contains(out, tt.want) {
				t.Errorf("got exit %d:\n%s\nwant exit 1 and %q", code, out, tt.want)
			}
			links, _ := sandbox.Command(ns, "ip", "-br", "link").Output()
			if strings.Contains(string(links), "br-vm1") {
				t.Errorf("a failed check still changed the host:\n%s", links)
			}
		})
	}
}

// addUsers makes the users of in's VMs, which are machine-wide, so that
// plans are the same at every run.
func addUsers(t *testing.T, in *config.Infra) {
	t.Helper()
	for i := range in.VMs {
		if err := hostnet.NewUser(&in.VMs[i]).Apply(); err != nil {
			t.Fatal(err)
		}
	}
}

func ipExec(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
	}
}
