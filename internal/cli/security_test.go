package cli

// The attacks of issue 11 that need no guest, each performed for real, as
// root, inside sandbox namespaces: a VM reaching the LAN or cloud
// metadata, a VMM opening another VM's TAP, a foreign link taken over by
// apply, and destroy deleting what is not a VM's.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestInternetOnly: VMs reach the internet, and not the LAN (the router,
// another host on the uplink's network), the cloud metadata server or
// Azure's WireServer; a
// VM's own DNS server stays reachable on port 53 wherever it is; an allow
// list opens exactly what it names, for one VM or for all.
func TestInternetOnly(t *testing.T) {
	lan, meta := sandbox.LANAddr.Addr(), sandbox.MetadataAddr
	file := writeFile(t, fmt.Sprintf(`[host]
uplink = "eth0"
allow = ["%s/32 udp %d"]

[vm.vm1]
subnet = "10.1.0.0/24"
allow = ["%s tcp %d"]

[vm.vm2]
subnet = "10.2.0.0/24"
dns = "%s"
`, meta, sandbox.Port, lan, sandbox.Port, lan))
	sb, in := newSandbox(t, file)
	addUsers(t, in)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", file)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	port := func(a netip.Addr, p int) netip.AddrPort { return netip.AddrPortFrom(a, uint16(p)) }
	tests := []struct {
		vm, what string
		probe    func(ns string) check.Result
		reached  bool
	}{
		{"vm1", "the internet", func(ns string) check.Result { return sandbox.TCP(ns, port(sandbox.InternetAddr, sandbox.Port)) }, true},
		{"vm2", "the internet", func(ns string) check.Result { return sandbox.TCP(ns, port(sandbox.InternetAddr, sandbox.Port)) }, true},
		// vm1's allow entry: the LAN host over TCP on that port, nothing else.
		{"vm1", "the LAN host, allowed port", func(ns string) check.Result { return sandbox.TCP(ns, port(lan, sandbox.Port)) }, true},
		{"vm1", "the LAN host over UDP", func(ns string) check.Result { return sandbox.UDP(ns, port(lan, sandbox.Port)) }, false},
		{"vm1", "the LAN host's other port", func(ns string) check.Result { return sandbox.TCP(ns, port(lan, 53)) }, false},
		{"vm1", "the LAN host by ping", func(ns string) check.Result { return sandbox.Ping(ns, lan) }, false},
		{"vm2", "the LAN host", func(ns string) check.Result { return sandbox.TCP(ns, port(lan, sandbox.Port)) }, false},
		// vm2's DNS server is the LAN host: port 53 only, both protocols.
		{"vm2", "its DNS server over UDP", func(ns string) check.Result { return sandbox.UDP(ns, port(lan, 53)) }, true},
		{"vm2", "its DNS server over TCP", func(ns string) check.Result { return sandbox.TCP(ns, port(lan, 53)) }, true},
		{"vm1", "vm2's DNS server", func(ns string) check.Result { return sandbox.UDP(ns, port(lan, 53)) }, false},
		{"vm1", "the router", func(ns string) check.Result { return sandbox.TCP(ns, port(sandbox.ISPAddr.Addr(), sandbox.Port)) }, false},
		// The host's allow entry: the metadata server over UDP, for every VM.
		{"vm1", "cloud metadata over TCP", func(ns string) check.Result { return sandbox.TCP(ns, port(meta, sandbox.Port)) }, false},
		{"vm2", "cloud metadata over TCP", func(ns string) check.Result { return sandbox.TCP(ns, port(meta, sandbox.Port)) }, false},
		{"vm2", "cloud metadata over UDP, allowed", func(ns string) check.Result { return sandbox.UDP(ns, port(meta, sandbox.Port)) }, true},
		// Azure's WireServer hands out certificates and settings to the
		// host's agent: no VM reaches it.
		{"vm1", "Azure's WireServer over TCP", func(ns string) check.Result { return sandbox.TCP(ns, port(sandbox.WireServer, sandbox.Port)) }, false},
		{"vm2", "Azure's WireServer over UDP", func(ns string) check.Result { return sandbox.UDP(ns, port(sandbox.WireServer, sandbox.Port)) }, false},
		{"vm1", "Azure's WireServer by ping", func(ns string) check.Result { return sandbox.Ping(ns, sandbox.WireServer) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.vm+" to "+tt.what, func(t *testing.T) {
			var r check.Result
			// A probe that should pass may miss a busy moment; one that
			// must not pass gets one try, so a leak is never retried away.
			for range 3 {
				if r = tt.probe(sb.VMs[tt.vm]); r.Reached || !tt.reached {
					break
				}
			}
			if r.Reached != tt.reached {
				t.Errorf("reached = %v (%v), want %v", r.Reached, r.Err, tt.reached)
			}
			if r.Reached && r.SeenAs != sandbox.UplinkAddr.Addr().String() {
				t.Errorf("seen as %q: not NATed to the uplink's address", r.SeenAs)
			}
		})
	}
	// plan -v shows the allow lists in the ruleset, and where they are written.
	out := mustRun(t, sb.Host, "plan", "-v", "--host-only", "-f", file)
	for _, want := range []string{
		fmt.Sprintf(`iifname "br-vm1" oifname "eth0" ip daddr %s/32 meta l4proto tcp th dport { %d } accept comment "allow %s tcp %d (vm1)"`, lan, sandbox.Port, lan, sandbox.Port),
		fmt.Sprintf(`ip daddr %s/32 meta l4proto udp th dport { %d } accept comment "allow %s udp %d (every VM)"`, meta, sandbox.Port, meta, sandbox.Port),
		fmt.Sprintf("#   allow %s tcp %d (vm1): %s:7:10", lan, sandbox.Port, file),
		"192.0.2.0/24", // the uplink's network, in the blocked set
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan -v lacks %q:\n%s", want, out)
		}
	}
}

// TestTailnetNotHost: a tailnet client that uses the host's subnet routes
// reaches the VMs, and not the host at its gateway addresses, which lie
// inside those routes (a tailnet ACL that opens the VM subnets would open
// the hypervisor too): not its sshd (a listener on port 22), not by ping,
// not another VM's gateway. The host's own tailnet address is left as it
// is: the operator's business.
func TestTailnetNotHost(t *testing.T) {
	sb, in := newSandbox(t, example)
	addUsers(t, in)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	client, err := sb.AddTailnetClient()
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	// A service of the host's on every address, TCP and UDP, besides sshd.
	if err := sandbox.Serve(sb.Host, sandbox.Port); err != nil {
		t.Fatal(err)
	}
	vm1, vm2 := in.VMs[0], in.VMs[1]
	ssh := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 22) }
	tests := []struct {
		what    string
		probe   func() check.Result
		reached bool
	}{
		{"vm1 over TCP", func() check.Result { return sandbox.TCP(client, netip.AddrPortFrom(vm1.Addr, sandbox.Port)) }, true},
		{"vm1 by ping", func() check.Result { return sandbox.Ping(client, vm1.Addr) }, true},
		{"vm2 over TCP", func() check.Result { return sandbox.TCP(client, netip.AddrPortFrom(vm2.Addr, sandbox.Port)) }, true},
		{"the host's sshd at vm1's gateway", func() check.Result { return sandbox.TCP(client, ssh(vm1.Gateway)) }, false},
		{"the host at vm1's gateway by ping", func() check.Result { return sandbox.Ping(client, vm1.Gateway) }, false},
		{"the host's sshd at vm2's gateway", func() check.Result { return sandbox.TCP(client, ssh(vm2.Gateway)) }, false},
		{"the host at vm2's gateway over UDP", func() check.Result { return sandbox.UDP(client, netip.AddrPortFrom(vm2.Gateway, sandbox.Port)) }, false},
		{"the host's sshd at its tailnet address", func() check.Result { return sandbox.TCP(client, ssh(sandbox.TailnetHostAddr.Addr())) }, true},
		{"the host at its tailnet address over UDP", func() check.Result {
			return sandbox.UDP(client, netip.AddrPortFrom(sandbox.TailnetHostAddr.Addr(), sandbox.Port))
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.what, func(t *testing.T) {
			var r check.Result
			// As in TestInternetOnly: a leak is never retried away.
			for range 3 {
				if r = tt.probe(); r.Reached || !tt.reached {
					break
				}
			}
			if r.Reached != tt.reached {
				t.Errorf("reached = %v (%v), want %v", r.Reached, r.Err, tt.reached)
			}
		})
	}
}

// TestTAPOwnership: a VMM can attach to its own VM's TAP and to no other.
// It runs as the user that owns vm1's TAP, with a /dev/net/tun it may
// open (on many hosts /dev/net/tun is 0666; on this one it may not be).
func TestTAPOwnership(t *testing.T) {
	sb, in := newSandbox(t, example)
	addUsers(t, in)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
	// A device node works only on a mount without nodev: /tmp, or else
	// /dev itself.
	dir := t.TempDir()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil && st.Flags&unix.ST_NODEV != 0 {
		var err error
		if dir, err = os.MkdirTemp("/dev", "mvt"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	tun := filepath.Join(dir, "tun")
	if err := unix.Mknod(tun, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		t.Fatal(err)
	}
	// The VMM user must reach it: the test's own directories only.
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if strings.HasPrefix(p, os.TempDir()+"/") || strings.HasPrefix(p, "/dev/mvt") {
			os.Chmod(p, 0o755)
		}
	}
	os.Chmod(tun, 0o666)
	var uid, gid uint32
	sandbox.Do(sb.Host, func() error {
		l, err := netlink.LinkByName("vm-vm1")
		if err != nil {
			t.Fatal(err)
		}
		uid, gid = l.(*netlink.Tuntap).Owner, l.(*netlink.Tuntap).Group
		return nil
	})
	if uid == 0 {
		t.Fatal("vm-vm1 is owned by root")
	}
	for _, tt := range []struct {
		tap  string
		want error
	}{
		{"vm-vm1", nil},
		{"vm-vm2", unix.EPERM},
		{"vm-vm3", unix.EPERM},
	} {
		err := testenv.AsUser(uid, gid, enter(sb.Host), func() error { return attachTAP(tun, tt.tap) })
		if err != tt.want {
			t.Errorf("as vm1's VMM user (uid %d), attaching to %s: %v; want %v", uid, tt.tap, err, tt.want)
		}
	}
}

// enter joins the network namespace ns, on the calling thread.
func enter(ns string) func() error {
	return func() error {
		h, err := netns.GetFromName(ns)
		if err != nil {
			return err
		}
		defer h.Close()
		return netns.Set(h)
	}
}

// attachTAP opens the TUN device at dev and attaches to the TAP name, as a
// VMM does (TUNSETIFF), with the flags apply made the example's TAPs with.
func attachTAP(dev, name string) error {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return errno
	}
	return nil
}

// TestForeignLinks: a link with a name the model derives that the program
// did not make (the user's own LAN bridge, a TAP of another tool) is an
// error at plan and apply, with the file's line, and is left as it was.
func TestForeignLinks(t *testing.T) {
	const file = "[host]\nuplink = \"eth0\"\n[vm.lan]\nsubnet = \"10.7.0.0/24\"\n"
	for _, tt := range []struct {
		name, link string
		setup      []string // ip commands that make it
		want       string
	}{
		{"bridge", "br-lan", []string{"link add br-lan type bridge"},
			`infra.toml:3:5: vm.lan needs the interface name br-lan, but br-lan exists and was not made by microvm (its alias is "", not "microvm:lan")`},
		{"bridge with another alias", "br-lan", []string{"link add br-lan type bridge", "link set br-lan alias home-lan"},
			`infra.toml:3:5: vm.lan needs the interface name br-lan, but br-lan exists and was not made by microvm (its alias is "home-lan", not "microvm:lan")`},
		{"TAP", "vm-lan", []string{"tuntap add dev vm-lan mode tap"},
			`infra.toml:3:5: vm.lan needs the interface name vm-lan, but vm-lan exists and was not made by microvm`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := testenv.NetNS(t)
			ipExec(t, ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
			for _, c := range tt.setup {
				ipExec(t, ns, strings.Fields(c)...)
			}
			link := tt.link
			ipExec(t, ns, "addr", "add", "192.168.77.1/24", "dev", link)
			ipExec(t, ns, "link", "set", link, "up")
			before, _ := sandbox.Command(ns, "ip", "addr", "show", link).Output()
			f := writeFile(t, file)
			in, _ := config.Load(f)
			addUsers(t, in)
			for _, cmd := range []string{"plan", "apply"} {
				out, code := run(t, ns, cmd, "--host-only", "-f", f)
				if code != 1 || !strings.Contains(out, strings.Replace(tt.want, "infra.toml", f, 1)) {
					t.Errorf("%s: exit %d:\n%s\nwant exit 1 and %q", cmd, code, out, tt.want)
				}
			}
			after, _ := sandbox.Command(ns, "ip", "addr", "show", link).Output()
			if string(before) != string(after) {
				t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", link, before, after)
			}
			if links, _ := sandbox.Command(ns, "ip", "-br", "link").Output(); strings.Contains(string(links), "vm-lan") != (tt.name == "TAP") {
				t.Errorf("links after the refused apply:\n%s", links)
			}
		})
	}
}

// TestDestroyRefuses: destroy deletes only the data of a name that is, or
// was, a VM: not the images, not the admin key, not a directory of
// state_dir that the program did not mark as a VM's.
func TestDestroyRefuses(t *testing.T) {
	testenv.NeedRoot(t)
	state, runDir := t.TempDir(), testenv.ShortDir(t)
	file := writeFile(t, fmt.Sprintf("[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n", state, runDir))
	for _, f := range []string{"images/debian/rootfs/etc/hostname", "admin/id_ed25519", "backup/important", "vm9/etc/hostname"} {
		p := filepath.Join(state, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("keep me\n"), 0o600)
	}
	ns := testenv.NetNS(t) // destroy changes no network, but never here either
	for _, tt := range []struct{ name, want string }{
		{"images", "images is not a VM: STATE_DIR/images holds the shared images"},
		{"admin", "admin is not a VM: STATE_DIR/admin holds the admin SSH key"},
		{"backup", "is not the data of a VM called backup (it lacks the mark .microvm-vm"},
		{"vm9", "is not the data of a VM called vm9"},
		{"../etc", `"../etc" is not a VM name`},
	} {
		out, code := run(t, ns, "destroy", "-f", file, "--data", "--yes", tt.name)
		if code != 1 || !strings.Contains(out, tt.want) {
			t.Errorf("destroy %s: exit %d, %q; want exit 1 and %q", tt.name, code, out, tt.want)
		}
	}
	for _, f := range []string{"images/debian/rootfs/etc/hostname", "admin/id_ed25519", "backup/important", "vm9/etc/hostname"} {
		if b, err := os.ReadFile(filepath.Join(state, f)); err != nil || string(b) != "keep me\n" {
			t.Errorf("%s: %q, %v; want it kept", f, b, err)
		}
	}
}

// TestOpenings: an opening lets one VM connect to one port of another, and
// nothing else crosses between them, in any protocol or direction; a
// published port reaches its VM from the internet, with the client's own
// address, from the sources its from names only; nothing else of a VM is
// reached from outside.
func TestOpenings(t *testing.T) {
	p := sandbox.Port
	file := writeFile(t, fmt.Sprintf(`[host]
uplink = "eth0"

[vm.web]
subnet = "10.5.0.0/24"
allow = ["vm:db tcp %d"]
publish = ["tcp 8080:%d", "tcp 8081:%d from 198.51.100.0/24"]

[vm.db]
subnet = "10.6.0.0/24"

[vm.cache]
subnet = "10.7.0.0/24"
allow = ["vm:db"]

[vm.other]
subnet = "10.8.0.0/24"
`, p, p, p))
	sb, in := newSandbox(t, file)
	addUsers(t, in)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", file)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	// A client of the internet in the published port's from list.
	allowed := netip.MustParseAddr("198.51.100.5")
	if out, err := exec.Command("ip", "-n", sb.Internet, "addr", "add", allowed.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	addr := func(vm string) netip.Addr { v, _ := in.VM(vm); return v.Addr }
	at := func(vm string, port int) netip.AddrPort { return netip.AddrPortFrom(addr(vm), uint16(port)) }
	uplink := func(port int) netip.AddrPort { return netip.AddrPortFrom(sandbox.UplinkAddr.Addr(), uint16(port)) }
	tests := []struct {
		from, what string
		probe      func(ns string) check.Result
		reached    bool
	}{
		{"web", "db's opened port", func(ns string) check.Result { return sandbox.TCP(ns, at("db", p)) }, true},
		{"web", "db's opened port over UDP", func(ns string) check.Result { return sandbox.UDP(ns, at("db", p)) }, false},
		{"web", "db's SSH port", func(ns string) check.Result { return sandbox.TCP(ns, at("db", 22)) }, false},
		{"web", "db by ping", func(ns string) check.Result { return sandbox.Ping(ns, addr("db")) }, false},
		{"db", "web, the other way", func(ns string) check.Result { return sandbox.TCP(ns, at("web", p)) }, false},
		{"db", "web by ping", func(ns string) check.Result { return sandbox.Ping(ns, addr("web")) }, false},
		{"other", "db's opened port", func(ns string) check.Result { return sandbox.TCP(ns, at("db", p)) }, false},
		{"cache", "db, every protocol: TCP", func(ns string) check.Result { return sandbox.TCP(ns, at("db", p)) }, true},
		{"cache", "db, every protocol: UDP", func(ns string) check.Result { return sandbox.UDP(ns, at("db", p)) }, true},
		{"cache", "db, every protocol: ping", func(ns string) check.Result { return sandbox.Ping(ns, addr("db")) }, true},
		{"cache", "web", func(ns string) check.Result { return sandbox.TCP(ns, at("web", p)) }, false},
		{"internet", "web's published port", func(ns string) check.Result { return sandbox.TCP(ns, uplink(8080)) }, true},
		{"internet", "web's port published to others", func(ns string) check.Result { return sandbox.TCP(ns, uplink(8081)) }, false},
		{"internet", "web's unpublished port", func(ns string) check.Result { return sandbox.TCP(ns, uplink(p)) }, false},
		{"internet", "web itself", func(ns string) check.Result { return sandbox.TCP(ns, at("web", p)) }, false},
		{"internet from 198.51.100.5", "web's port published to it", func(ns string) check.Result { return sandbox.TCPFrom(ns, allowed, uplink(8081)) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.from+" to "+tt.what, func(t *testing.T) {
			ns := sb.VMs[tt.from]
			if strings.HasPrefix(tt.from, "internet") {
				ns = sb.Internet
			}
			var r check.Result
			for range 3 { // retried only while it should pass: a leak is never retried away
				if r = tt.probe(ns); r.Reached || !tt.reached {
					break
				}
			}
			// From outside, "reached" is a VM's server answering (the
			// host refusing a port of its own is not a VM reached).
			got := r.Reached
			if strings.HasPrefix(tt.from, "internet") {
				got = r.Reached && r.SeenAs != ""
			}
			if got != tt.reached {
				t.Errorf("reached = %v (%+v), want %v", got, r, tt.reached)
			}
		})
	}
	// A published port keeps the client's address: the VM sees who calls.
	if r := sandbox.TCP(sb.Internet, uplink(8080)); r.SeenAs != sandbox.ISPAddr.Addr().String() {
		t.Errorf("web saw the internet's client as %q, want %s", r.SeenAs, sandbox.ISPAddr.Addr())
	}

	// check proves the same, in its matrix; and fails when an opening
	// is taken away.
	r := check.Run(in, sandbox.Prober{S: sb}, sb.Target())
	var b bytes.Buffer
	r.Print(&b)
	for _, c := range []struct{ row, col, want string }{
		{"web", "db", fmt.Sprintf("tcp %d ok, rest blocked", p)},
		{"cache", "db", "all ok"},
		{"db", "web", "blocked"},
		{check.Outside, "web", "tcp 8080 ok, tcp 8081 closed to it"},
	} {
		if got := r.Cells[c.row][c.col]; got.Text != c.want || !got.OK {
			t.Errorf("check's %s to %s: %+v, want %q", c.row, c.col, got, c.want)
		}
	}
	if !r.OK() {
		t.Errorf("check fails:\n%s", b.String())
	}
	if out, err := sandbox.Command(sb.Host, "nft", "flush", "set", "inet", "microvm", "vm_openings").CombinedOutput(); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if r := check.Run(in, sandbox.Prober{S: sb}, sb.Target()); r.OK() || r.Cells["web"]["db"].OK {
		t.Errorf("check passes with web's opening gone: %+v", r.Cells["web"]["db"])
	}
}
