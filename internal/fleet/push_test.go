package fleet_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
)

// TestPushMany: a push writes its file and every placement in one
// transaction, which etcd as installed takes however many VMs it places
// (its --max-txn-ops is 128: the placements are one key); a push of the
// same file again places nothing.
func TestPushMany(t *testing.T) {
	ms, dir := fleettest.Local(t, 1, "root")
	c := fleettest.Start(t, dir, ms)
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

	cli := fleettest.Client(t, ms[0].Netns, c.Endpoints(), fleet.Certs{Dir: dir, Name: "root"})
	p, err := fleet.Push(ctx, cli, "fleet.toml", src, 0)
	if err != nil {
		t.Fatalf("push of %d VMs: %v", n, err)
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
