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
//	                                          168.63.129.16 (Azure's WireServer)
//	tailnet client ns: eth0 100.64.1.2 ──veth── tailscale0 100.64.1.1 in the host ns (AddTailnetClient)
//
// Every address used is from the documentation ranges, the model, or a
// cloud's own (answered inside the internet namespace), and every packet
// stays inside these namespaces.
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

	TailnetHostAddr   = netip.MustParsePrefix("100.64.1.1/24") // the host's tailscale0
	TailnetClientAddr = netip.MustParsePrefix("100.64.1.2/24") // a tailnet client that uses its subnet routes
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
	}
	for _, st := range steps {
		if err := ip(st...); err != nil {
			return s, err
		}
	}
	// The host learns the router's MAC now: a first ARP request lost on
	// the fresh bridge is retried only a second later, and a test's first
	// short flood through the uplink would see nothing come back.
	for try := 0; ; try++ {
		out, err := Command(s.Host, "ping", "-c", "1", "-W", "1", ISPAddr.Addr().String()).CombinedOutput()
		if err == nil {
			break
		}
		if try == 9 {
			return s, fmt.Errorf("the sandbox's host does not reach its router %s: %s: %w", ISPAddr.Addr(), strings.TrimSpace(string(out)), err)
		}
	}
	return s, nil
}

// standIn names the host end of a stand-in's veth.
func standIn(vm string) string { return "sb-" + vm }

// AddStandIns gives every VM a namespace standing in for its guest: eth0
// with the VM's address and MAC and a default route via its gateway, on a
// veth whose host end is a port of the VM's bridge, as the VMM's TAP would
// be. The bridges must exist: call it after applying the host part.
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
	}
	for _, vm := range s.in.VMs {
		steps = append(steps, []string{"-n", ns, "route", "add", vm.Subnet.String(), "via", TailnetHostAddr.Addr().String()})
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
	return ip("-n", name, "link", "set", "lo", "up")
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

// Serve starts the test servers: the internet server (which also answers
// on the router's, the metadata server's and the WireServer's addresses), the LAN host's (on
// Port, and on 53 as a DNS server would), a server in every stand-in there
// is, and a listener on the host's port 22 standing in for sshd (which no
// VM may reach).
func (s *Sandbox) Serve() error {
	for _, sv := range []struct {
		ns   string
		port int
	}{{s.Internet, Port}, {s.LAN, Port}, {s.LAN, 53}, {s.Host, 22}} {
		if err := Serve(sv.ns, sv.port); err != nil {
			return err
		}
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
	}
}
