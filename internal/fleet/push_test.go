package fleet_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/pki"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestPushMany: a push writes its file and every new placement in one
// transaction. etcd's default --max-txn-ops (128) refuses one that places
// more VMs, and the push says which flag to raise; with the flag raised,
// every placement is written, and a push of the same file places nothing.
func TestPushMany(t *testing.T) {
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s %v", out, err)
	}
	dir := t.TempDir() + "/certs"
	ca, _, err := pki.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Client("root"); err != nil {
		t.Fatal(err)
	}
	// Two one-member clusters: etcd as installed, and with the limit raised.
	var eps []string
	for i, flags := range [][]string{nil, {"--max-txn-ops=1024"}} {
		name := fmt.Sprintf("etcd%d", i+1)
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)})
		if _, err := ca.Member(name, []netip.Addr{ip}, nil); err != nil {
			t.Fatal(err)
		}
		c := fleettest.Start(t, dir, []fleettest.Member{{Name: name, IP: ip, Netns: ns, Flags: flags}})
		eps = append(eps, c.Endpoints()[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	n := 300
	var b strings.Builder
	b.WriteString("[host]\nuplink = \"eth0\"\n[defaults]\nmemory = 128\n")
	b.WriteString("[fleet.host.hv1]\naddress = \"10.0.0.1\"\nmemory = 65536\n[fleet.host.hv2]\naddress = \"10.0.0.2\"\nmemory = 65536\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = \"10.%d.%d.0/24\"\n", i, 1+i/250, i%250)
	}
	src := []byte(b.String())

	stock := fleettest.Client(t, ns, eps[:1], fleet.Certs{Dir: dir, Name: "root"})
	if _, err := fleet.Push(ctx, stock, "fleet.toml", src, 0); err == nil || !strings.Contains(err.Error(), "--max-txn-ops") {
		t.Errorf("a push of %d new VMs to etcd's default limit: %v, want an error that names --max-txn-ops", n, err)
	}

	cli := fleettest.Client(t, ns, eps[1:], fleet.Certs{Dir: dir, Name: "root"})
	p, err := fleet.Push(ctx, cli, "fleet.toml", src, 0)
	if err != nil {
		t.Fatalf("push of %d VMs with --max-txn-ops=1024: %v", n, err)
	}
	st, err := fleet.Load(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Placed) != n || len(st.Placement) != n || st.FileRev != p.Rev {
		t.Errorf("placed %d, etcd holds %d placements and the file at revision %d; want %d, %d, %d", len(p.Placed), len(st.Placement), st.FileRev, n, n, p.Rev)
	}
	again, err := fleet.Push(ctx, cli, "fleet.toml", src, p.Rev)
	if err != nil {
		t.Fatalf("pushing the same file again: %v", err)
	}
	if len(again.Placed) != 0 {
		t.Errorf("the second push placed %d VMs, want 0", len(again.Placed))
	}
}
