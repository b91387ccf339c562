package fleettest

import (
	"fmt"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/pki"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// Local returns n members in one new namespace, on 127.0.0.11 and up, with
// their certificates and a client certificate for each of clients in the
// directory returned (not started: Start them). Their connections to each
// other come from 127.0.0.1, lo's first address, and etcd checks a peer's
// certificate against where it comes from: so it names 127.0.0.1 too.
func Local(t testing.TB, n int, clients ...string) ([]Member, string) {
	t.Helper()
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s %v", out, err)
	}
	dir := t.TempDir() + "/certs"
	ca, _, err := pki.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ms []Member
	for i := range n {
		name := fmt.Sprintf("etcd%d", i+1)
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)})
		if _, err := ca.Member(name, []netip.Addr{ip, netip.MustParseAddr("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, Member{Name: name, IP: ip, Netns: ns})
	}
	for _, name := range clients {
		if _, err := ca.Client(name); err != nil {
			t.Fatal(err)
		}
	}
	return ms, dir
}
