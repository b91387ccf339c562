package fleettest_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
)

// TestCluster checks that the client the program uses works with the
// server the tests run, for what the fleet needs of it: reads and
// writes, transactions, watches and leases, with a member down and back.
func TestCluster(t *testing.T) {
	ms, certs := fleettest.Local(t, 3, "root")
	c := fleettest.Start(t, certs, ms)
	cli := fleettest.Client(t, ms[0].Netns, c.Endpoints(), fleet.Certs{Dir: certs, Name: "root"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w := cli.Watch(ctx, fleet.Prefix, clientv3.WithPrefix())
	if _, err := cli.Put(ctx, fleet.DesiredKey, "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	ev := <-w
	if len(ev.Events) != 1 || string(ev.Events[0].Kv.Value) != "v1" {
		t.Errorf("watch: got %+v, want the put of v1", ev.Events)
	}

	// A transaction that holds only if nobody changed the key since.
	get, err := cli.Get(ctx, fleet.DesiredKey)
	if err != nil {
		t.Fatal(err)
	}
	rev := get.Kvs[0].ModRevision
	for _, want := range []bool{true, false} {
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(fleet.DesiredKey), "=", rev)).
			Then(clientv3.OpPut(fleet.DesiredKey, "v2")).Commit()
		if err != nil {
			t.Fatalf("txn: %v", err)
		}
		if resp.Succeeded != want {
			t.Errorf("txn at revision %d: got succeeded %v, want %v", rev, resp.Succeeded, want)
		}
	}

	lease, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatalf("lease grant: %v", err)
	}
	if _, err := cli.Put(ctx, fleet.AliveKey("hv1"), "", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatalf("put with lease: %v", err)
	}
	if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Fatalf("lease keepalive: %v", err)
	}

	// One member down: the other two still make a quorum.
	c.Kill("etcd1")
	if _, err := cli.Put(ctx, fleet.StatusKey("hv1"), "with etcd1 down"); err != nil {
		t.Fatalf("put with a member down: %v", err)
	}
	c.Restart("etcd1")
	one := fleettest.Client(t, ms[0].Netns, c.Endpoints()[:1], fleet.Certs{Dir: certs, Name: "root"})
	got, err := one.Get(ctx, fleet.StatusKey("hv1"))
	if err != nil {
		t.Fatalf("get from the restarted member: %v", err)
	}
	if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "with etcd1 down" {
		t.Errorf("restarted member: got %v, want the write made while it was down", got.Kvs)
	}

	// Without keepalives, the lease ends and its key goes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := cli.Get(ctx, fleet.AliveKey("hv1"))
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Kvs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there 10 s after its 2 s lease", fleet.AliveKey("hv1"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
