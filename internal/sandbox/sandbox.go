// Package sandbox builds a throwaway world of network namespaces in which the
// program can run for real without touching the machine it runs on: a
// "host" namespace (where the program applies its network and runs the
// microVMs), an "internet" namespace reached through the host's uplink, and
// a "LAN host" on the uplink's own network. Where no real guest is needed,
// a namespace per VM can stand in for it.
//
//	microVM vm1 (or stand-in ns) eth0 10.1.0.2 ── vm-vm1 (or sb-vm1) ─┐
//	                                        br-vm1 10.1.0.1 (made by apply)
//	host ns: eth0 192.0.2.2 ──veth── isp0 ┐
//	                                      lan0 192.0.2.1 : internet ns (the host's router)
//	lan ns:  eth0 192.0.2.50 ──veth── lan1 ┘  203.0.113.10 (the "internet" server)
//	         (a LAN host)                     169.254.169.254 (a cloud's metadata server)
//	                                          203.0.113.53 (a DNS server, with names at .20 and .30)
//	                                          168.63.129.16 (Azure's WireServer)
//	tailnet client ns: eth0 100.64.1.2 ──veth── tailscale0 100.64.1.1 in the host ns (AddTailnetClient)
//
// Each but the tailnet has IPv6 beside IPv4: the uplink 2001:db8:2::2/64
// on the router's 2001:db8:2::1, the LAN host 2001:db8:2::50, the internet
// server 2001:db8:113::10, the DNS server 2001:db8:113::53 and a metadata
// server at fd00:ec2::254, as AWS has it. Every address used is from the
// documentation ranges, the model, or a cloud's own (answered inside the
// internet namespace), and every packet stays inside these namespaces.
package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Addresses of the simulated internet (RFC 5737 documentation ranges).
var (
	UplinkAddr   = netip.MustParsePrefix("192.0.2.2/24")  // the host's uplink
	ISPAddr      = netip.MustParsePrefix("192.0.2.1/24")  // the host's default gateway
	InternetAddr = netip.MustParseAddr("203.0.113.10")    // a server "on the internet"
	LANAddr      = netip.MustParsePrefix("192.0.2.50/24") // another host on the uplink's network
	MetadataAddr = netip.MustParseAddr("169.254.169.254") // a cloud's instance metadata server, behind the router
	WireServer   = netip.MustParseAddr("168.63.129.16")   // Azure's WireServer, behind the router too

	UplinkAddr6   = netip.MustParsePrefix("2001:db8:2::2/64")
	ISPAddr6      = netip.MustParsePrefix("2001:db8:2::1/64")
	InternetAddr6 = netip.MustParseAddr("2001:db8:113::10")
	LANAddr6      = netip.MustParsePrefix("2001:db8:2::50/64")
	MetadataAddr6 = netip.MustParseAddr("fd00:ec2::254")

	TailnetHostAddr   = netip.MustParsePrefix("100.64.1.1/24") // the host's tailscale0
	TailnetClientAddr = netip.MustParsePrefix("100.64.1.2/24") // a tailnet client that uses its subnet routes

	TailnetHostAddr6   = netip.MustParsePrefix("fd7a:115c:a1e0::1/64") // the same in the tailnet's IPv6 range
	TailnetClientAddr6 = netip.MustParsePrefix("fd7a:115c:a1e0::2/64")
)

// Sandbox is a set of namespaces; Close removes them all.
type Sandbox struct {
	Host     string            // namespace where the program runs
	Internet string            // namespace holding the internet server, the router and the metadata server
	LAN      string            // namespace of the LAN host
	VMs      map[string]string // VM name -> namespace of its stand-in
	in       *config.Infra
	prefix   string
	all      []string
}

// New creates the host and internet namespaces. VMs come later: real
// microVMs started in the host namespace, or stand-ins (AddStandIns).
func New(in *config.Infra) (s *Sandbox, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the sandbox needs root to create network namespaces; run as root (sudo)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the sandbox needs the ip command; install iproute2")
	}
	id := make([]byte, 3)
	rand.Read(id)
	prefix := "mvm" + hex.EncodeToString(id)
	s = &Sandbox{Host: prefix + "-host", Internet: prefix + "-inet", LAN: prefix + "-lan", VMs: map[string]string{}, in: in, prefix: prefix}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, ns := range []string{s.Host, s.Internet, s.LAN} {
		if err := s.addNS(ns); err != nil {
			return s, err
		}
	}
	up := in.Host.Uplink
	v6 := func(args ...string) []string { return append([]string{"-6"}, append(args, "nodad")...) }
	steps := [][]string{
		{"-n", s.Host, "link", "add", up, "type", "veth", "peer", "name", "isp0", "netns", s.Internet},
		{"-n", s.Host, "addr", "add", UplinkAddr.String(), "dev", up},
		{"-n", s.Host, "link", "set", up, "up"},
		{"-n", s.Host, "route", "add", "default", "via", ISPAddr.Addr().String()},
		// The router's LAN is a bridge: the host's uplink and the LAN
		// host are on one segment, as on a home or office network.
		{"-n", s.Internet, "link", "add", "lan0", "type", "bridge"},
		{"-n", s.Internet, "link", "set", "isp0", "master", "lan0", "up"},
		{"-n", s.Internet, "addr", "add", ISPAddr.String(), "dev", "lan0"},
		{"-n", s.Internet, "link", "set", "lan0", "up"},
		{"-n", s.Internet, "addr", "add", InternetAddr.String() + "/32", "dev", "lo"},
		{"-n", s.Internet, "addr", "add", MetadataAddr.String() + "/32", "dev", "lo"},
		{"-n", s.Internet, "addr", "add", WireServer.String() + "/32", "dev", "lo"},
		{"-n", s.LAN, "link", "add", "eth0", "type", "veth", "peer", "name", "lan1", "netns", s.Internet},
		{"-n", s.LAN, "addr", "add", LANAddr.String(), "dev", "eth0"},
		{"-n", s.LAN, "link", "set", "eth0", "up"},
		{"-n", s.LAN, "route", "add", "default", "via", ISPAddr.Addr().String()},
		{"-n", s.Internet, "link", "set", "lan1", "master", "lan0", "up"},
		v6("-n", s.Host, "addr", "add", UplinkAddr6.String(), "dev", up),
		{"-6", "-n", s.Host, "route", "add", "default", "via", ISPAddr6.Addr().String()},
		v6("-n", s.Internet, "addr", "add", ISPAddr6.String(), "dev", "lan0"),
		v6("-n", s.Internet, "addr", "add", InternetAddr6.String()+"/128", "dev", "lo"),
		v6("-n", s.Internet, "addr", "add", MetadataAddr6.String()+"/128", "dev", "lo"),
		v6("-n", s.LAN, "addr", "add", LANAddr6.String(), "dev", "eth0"),
		{"-6", "-n", s.LAN, "route", "add", "default", "via", ISPAddr6.Addr().String()},
	}
	for _, a := range append(append([]netip.Addr{}, NameAddrs...), DNSAddr, DNSAddr6) {
		if a.Is4() {
			steps = append(steps, []string{"-n", s.Internet, "addr", "add", a.String() + "/32", "dev", "lo"})
		} else {
			steps = append(steps, v6("-n", s.Internet, "addr", "add", a.String()+"/128", "dev", "lo"))
		}
	}
	if in.Host.IPv6 && !in.Host.NAT66 {
		// A routed prefix: the router sends it to the host, as an ISP
		// that delegated it would.
		steps = append(steps, []string{"-6", "-n", s.Internet, "route", "add", in.Host.IPv6Prefix.String(), "via", UplinkAddr6.Addr().String()})
	}
	for _, st := range steps {
		if err := ip(st...); err != nil {
			return s, err
		}
	}
	// The host learns the router's MAC now: a first ARP request lost on
	// the fresh bridge is retried only a second later, and a test's first
	// short flood through the uplink would see nothing come back. The
	// same for IPv6's neighbour discovery.
	for _, router := range []netip.Addr{ISPAddr.Addr(), ISPAddr6.Addr()} {
		for try := 0; ; try++ {
			out, err := Command(s.Host, "ping", "-c", "1", "-W", "1", router.String()).CombinedOutput()
			if err == nil {
				break
			}
			if try == 9 {
				return s, fmt.Errorf("the sandbox's host does not reach its router %s: %s: %w", router, strings.TrimSpace(string(out)), err)
			}
		}
	}
	return s, nil
}

// standIn names the host end of a stand-in's veth.
func standIn(vm string) string { return "sb-" + vm }

// AddStandIns gives every VM a namespace standing in for its guest: eth0
// with the VM's address and MAC and a default route via its gateway (and
// the same for IPv6, with the link-local address the kernel derives from
// the MAC, as in a guest), on a veth whose host end is a port of the VM's
// bridge, as the VMM's TAP would be. The bridges must exist: call it after
// applying the host part.
func (s *Sandbox) AddStandIns() error {
	for _, vm := range s.in.VMs {
		ns := s.prefix + "-" + vm.Name
		if err := s.addNS(ns); err != nil {
			return err
		}
		s.VMs[vm.Name] = ns
		for _, st := range [][]string{
			{"-n", s.Host, "link", "add", standIn(vm.Name), "type", "veth", "peer", "name", "eth0", "netns", ns},
			{"-n", ns, "link", "set", "eth0", "address", vm.MAC.String()},
			{"-n", ns, "addr", "add", netip.PrefixFrom(vm.Addr, vm.Subnet.Bits()).String(), "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
			{"-n", ns, "route", "add", "default", "via", vm.Gateway.String()},
			{"-n", s.Host, "link", "set", standIn(vm.Name), "master", vm.Bridge, "up"},
		} {
			if err := ip(st...); err != nil {
				return err
			}
		}
		if !vm.HasIPv6() {
			continue
		}
		for _, st := range [][]string{
			{"-6", "-n", ns, "addr", "add", netip.PrefixFrom(vm.Addr6, vm.Subnet6.Bits()).String(), "dev", "eth0", "nodad"},
			{"-6", "-n", ns, "route", "add", "default", "via", vm.Gateway6.String()},
		} {
			if err := ip(st...); err != nil {
				return err
			}
		}
	}
	return nil
}

// AddTailnetClient gives the host a tailscale0 (a veth where tailscaled
// makes a TUN) with a namespace behind it standing in for a tailnet client
// that uses the host's subnet routes: every VM subnet goes through the
// host. It returns the client's namespace.
func (s *Sandbox) AddTailnetClient() (string, error) {
	ns := s.prefix + "-tnet"
	if err := s.addNS(ns); err != nil {
		return "", err
	}
	steps := [][]string{
		{"-n", s.Host, "link", "add", config.Tailscale, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", s.Host, "addr", "add", TailnetHostAddr.String(), "dev", config.Tailscale},
		{"-n", s.Host, "link", "set", config.Tailscale, "up"},
		{"-n", ns, "addr", "add", TailnetClientAddr.String(), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-6", "-n", s.Host, "addr", "add", TailnetHostAddr6.String(), "dev", config.Tailscale, "nodad"},
		{"-6", "-n", ns, "addr", "add", TailnetClientAddr6.String(), "dev", "eth0", "nodad"},
	}
	for _, vm := range s.in.VMs {
		steps = append(steps, []string{"-n", ns, "route", "add", vm.Subnet.String(), "via", TailnetHostAddr.Addr().String()})
		if vm.HasIPv6() {
			steps = append(steps, []string{"-6", "-n", ns, "route", "add", vm.Subnet6.String(), "via", TailnetHostAddr6.Addr().String()})
		}
	}
	for _, st := range steps {
		if err := ip(st...); err != nil {
			return "", err
		}
	}
	return ns, nil
}

// Close deletes every namespace of the sandbox, and with them every link,
// address, route and firewall rule made inside.
func (s *Sandbox) Close() error {
	var errs []string
	for i := len(s.all) - 1; i >= 0; i-- {
		if err := ip("netns", "del", s.all[i]); err != nil {
			errs = append(errs, err.Error())
		}
	}
	s.all = nil
	if len(errs) > 0 {
		return fmt.Errorf("removing sandbox: %s", strings.Join(errs, "; "))
	}
	return nil
}

func (s *Sandbox) addNS(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	s.all = append(s.all, name)
	// Links made here skip duplicate address detection, which would hold
	// their IPv6 addresses (a stand-in's link-local one too) back for a
	// second or two: every address in the sandbox is unique by design.
	return Do(name, func() error {
		for _, key := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+key+"/accept_dad", []byte("0"), 0o644); err != nil {
				return fmt.Errorf("turning off duplicate address detection in %s: %w", name, err)
			}
		}
		return ip("-n", name, "link", "set", "lo", "up")
	})
}

// Do runs f with the calling goroutine's thread inside namespace ns, so
// netlink, sockets, /proc/sys/net and commands started by f all act there.
// Goroutines that f starts do not inherit the namespace.
func Do(ns string, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading current namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", ns, err)
	}
	defer func() {
		// If the thread cannot go back, keep it locked: the runtime then
		// ends it with this goroutine instead of reusing it elsewhere.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := ensureNotMachine(); err != nil {
		return err
	}
	return f()
}

// startNS is the network namespace the program started in: the machine's
// own. It is read once, before any thread has moved.
var startNS, startNSErr = nsID("/proc/self/ns/net")

func nsID(path string) ([2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return [2]uint64{}, fmt.Errorf("reading network namespace: %w", err)
	}
	return [2]uint64{st.Dev, st.Ino}, nil
}

// ensureNotMachine refuses to go on in the namespace the program started in:
// the sandbox must never change the network of the machine it runs on.
func ensureNotMachine() error {
	if startNSErr != nil {
		return startNSErr
	}
	self, err := nsID(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return err
	}
	if self == startNS {
		return fmt.Errorf("refusing to act in the machine's own network namespace")
	}
	return nil
}

// Command returns cmd to run inside namespace ns, as `ip netns exec` runs
// it, in a mount namespace of its own that receives the host's mounts
// (and keeps its own, such as the image views a supervisor mounts, to
// itself) but with the host's /sys: `ip netns exec` mounts a sysfs of the
// namespace over it, which hides the cgroup hierarchies under
// /sys/fs/cgroup, where the keeper makes each VM's cgroup (package
// cgroup). Nothing the program runs reads the network from /sys.
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", ns), "--", "unshare", "--mount", "--propagation", "slave", "--", name}, args...)...)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), strings.TrimSpace(string(out)), err)
	}
	return nil
}

// Serve starts the test servers, on IPv4 and IPv6: the internet server
// (which also answers on the router's, the metadata server's, the
// WireServer's and the named servers' addresses), the internet's DNS
// server (ServeDNS), the LAN host's (on Port, and on 53 as a DNS server
// would), a server in every stand-in there is, and a listener on the
// host's port 22 standing in for sshd (which no VM may reach).
func (s *Sandbox) Serve() error {
	for _, sv := range []struct {
		ns   string
		port int
	}{{s.Internet, Port}, {s.LAN, Port}, {s.LAN, 53}, {s.Host, 22}} {
		if err := Serve(sv.ns, sv.port); err != nil {
			return err
		}
	}
	if err := ServeDNS(s.Internet); err != nil {
		return err
	}
	for _, ns := range s.VMs {
		if err := Serve(ns, Port); err != nil {
			return err
		}
	}
	return nil
}

// Target says where check's probes go in this sandbox.
func (s *Sandbox) Target() check.Target {
	return check.Target{
		Internet: InternetAddr,
		Port:     Port,
		Uplink:   UplinkAddr.Addr(),
		HostSSH:  []netip.Addr{UplinkAddr.Addr()},
		Private:  []netip.Addr{LANAddr.Addr(), ISPAddr.Addr(), MetadataAddr},
		// The internet's probes to the host come from the router's address.
		OutsideFrom: ISPAddr.Addr(),
		IPv6: &check.Target6{
			Internet:    InternetAddr6,
			Uplink:      UplinkAddr6.Addr(),
			HostSSH:     []netip.Addr{UplinkAddr6.Addr()},
			Private:     []netip.Addr{LANAddr6.Addr(), ISPAddr6.Addr(), MetadataAddr6},
			OutsideFrom: ISPAddr6.Addr(),
		},
		Unlisted: UnlistedName,
	}
}
