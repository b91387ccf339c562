package hostnet

import (
	"net"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// testVM is vm1 of a small model, its VMM user the one running the test
// (whose ids a TAP's owner is compared with), and vCPUs vcpu.
func testVM(t *testing.T, vcpu int) *config.VM {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte("[host]\nuplink = \"eth0\"\n\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\nvcpu = "+strconv.Itoa(vcpu)+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	vm := &in.VMs[0]
	vm.User = u.Username
	return vm
}

func texts(acts []action.Action) []string {
	out := []string{}
	for _, a := range acts {
		out = append(out, a.String())
	}
	return out
}

// The bridge's addresses are compared with the gateway's, from what was
// read of the host: no root, no netlink.
func TestBridgeDiff(t *testing.T) {
	vm := testVM(t, 1)
	gw := netip.MustParsePrefix("10.1.0.1/24")
	bridge := func(alias string, up bool) netlink.Link {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: vm.Bridge, Alias: alias}}
		if up {
			b.Flags = net.FlagUp
		}
		return b
	}
	add := "ip link add br-vm1 group 7173741 type bridge && ip link set br-vm1 alias microvm:vm1"
	for _, tt := range []struct {
		name  string
		link  netlink.Link
		addrs []netip.Prefix
		want  []string
	}{
		{"missing", nil, nil, []string{add, "ip addr add 10.1.0.1/24 dev br-vm1", "ip link set br-vm1 up"}},
		{"as wanted", bridge(vm.Alias(), true), []netip.Prefix{gw}, []string{}},
		{"no address", bridge(vm.Alias(), true), nil, []string{"ip addr add 10.1.0.1/24 dev br-vm1"}},
		{"another address", bridge(vm.Alias(), true), []netip.Prefix{netip.MustParsePrefix("10.1.0.9/24")},
			[]string{"ip addr del 10.1.0.9/24 dev br-vm1", "ip addr add 10.1.0.1/24 dev br-vm1"}},
		{"the gateway with another prefix length", bridge(vm.Alias(), true), []netip.Prefix{netip.MustParsePrefix("10.1.0.1/16")},
			[]string{"ip addr del 10.1.0.1/16 dev br-vm1", "ip addr add 10.1.0.1/24 dev br-vm1"}},
		{"an extra address", bridge(vm.Alias(), true), []netip.Prefix{gw, netip.MustParsePrefix("192.168.9.1/24")},
			[]string{"ip addr del 192.168.9.1/24 dev br-vm1"}},
		{"down", bridge(vm.Alias(), false), []netip.Prefix{gw}, []string{"ip link set br-vm1 up"}},
		{"made by an interrupted apply, without its alias", bridge("", true), []netip.Prefix{gw}, []string{add}},
	} {
		if got := texts(bridgeDiff(vm, tt.link, tt.addrs)); !slices.Equal(got, tt.want) {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

// A TAP whose owner or queue mode differs is made again (both are fixed
// when a TAP is made): a VM given a second vCPU gets a multi-queue TAP.
func TestTAPDiff(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	const bridgeIndex = 7
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-vm1", Index: bridgeIndex}}
	tap := func(multi bool, owner int, master int, up bool) netlink.Link {
		flags := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR
		if multi {
			flags |= netlink.TUNTAP_MULTI_QUEUE
		}
		l := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm1", Alias: "microvm:vm1", MasterIndex: master},
			Mode: netlink.TUNTAP_MODE_TAP, Flags: flags, Owner: uint32(owner), Group: uint32(gid)}
		if up {
			l.LinkAttrs.Flags = net.FlagUp
		}
		return l
	}
	add := func(multi bool) string {
		s := "ip tuntap add dev vm-vm1 mode tap user " + u.Username + " group " + u.Username + " vnet_hdr"
		if multi {
			s += " multi_queue"
		}
		return s + " && ip link set vm-vm1 alias microvm:vm1"
	}
	master, up, del := "ip link set vm-vm1 master br-vm1", "ip link set vm-vm1 up", "ip link del vm-vm1"
	for _, tt := range []struct {
		name string
		vcpu int
		link netlink.Link
		want []string
	}{
		{"missing", 1, nil, []string{add(false), master, up}},
		{"missing, 2 vCPUs", 2, nil, []string{add(true), master, up}},
		{"as wanted", 1, tap(false, uid, bridgeIndex, true), []string{}},
		{"as wanted, 2 vCPUs", 2, tap(true, uid, bridgeIndex, true), []string{}},
		{"a vCPU added", 2, tap(false, uid, bridgeIndex, true), []string{del, add(true), master, up}},
		{"back to one vCPU", 1, tap(true, uid, bridgeIndex, true), []string{del, add(false), master, up}},
		{"another owner", 1, tap(false, uid+1, bridgeIndex, true), []string{del, add(false), master, up}},
		{"off the bridge", 1, tap(false, uid, 0, true), []string{master}},
		{"down", 1, tap(false, uid, bridgeIndex, false), []string{up}},
		{"a bridge of the same name", 1, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vm-vm1"}}, []string{del, add(false), master, up}},
	} {
		vm := testVM(t, tt.vcpu)
		if got := texts(tapDiff(vm, tt.link, br)); !slices.Equal(got, tt.want) {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
		}
	}
}
