package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

const memberFile = `[host]
uplink = "eth0"
[fleet.host.hv1]
address = "10.0.0.1"
memory = 2048
[fleet.host.hv2]
address = "10.0.0.2"
memory = 1024
[vm.a]
subnet = "10.1.0.0/24"
memory = 512
host = "hv2"
[vm.b]
subnet = "10.2.0.0/24"
memory = 512
`

// cluster starts a one-member etcd with auth on, in a namespace of the
// test's, and returns root's client and a client maker.
func cluster(t *testing.T) (*fleettest.Cluster, string, func(name string) *clientv3.Client) {
	t.Helper()
	ms, dir := fleettest.Local(t, 1, "root", "hv1", "hv2")
	ns := ms[0].Netns
	c := fleettest.Start(t, dir, ms)
	client := func(name string) *clientv3.Client {
		return fleettest.Client(t, ns, c.Endpoints(), fleet.Certs{Dir: dir, Name: name})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fleet.SetupAuth(ctx, client("root"), []string{"hv1", "hv2"}); err != nil {
		t.Fatal(err)
	}
	return c, dir, client
}

// TestPush: a push places the VMs and stores the file in one transaction;
// a push replacing an old revision is refused, as is a host's push.
func TestPush(t *testing.T) {
	_, _, client := cluster(t)
	root := client("root")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p1, err := fleet.Push(ctx, root, "fleet.toml", []byte(memberFile), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p1.Placed, map[string]string{"a": "hv2", "b": "hv1"}; len(got) != 2 || got["a"] != want["a"] || got["b"] != want["b"] {
		t.Errorf("first push placed %v, want %v", got, want)
	}
	p2, err := fleet.Push(ctx, root, "fleet.toml", []byte(memberFile+"# a comment\n"), p1.Rev)
	if err != nil {
		t.Fatalf("a push replacing the current revision: %v", err)
	}
	if len(p2.Placed) != 0 || p2.Replaced != p1.Rev {
		t.Errorf("second push placed %v replacing %d; want nothing placed, replacing %d", p2.Placed, p2.Replaced, p1.Rev)
	}
	if _, err := fleet.Push(ctx, root, "fleet.toml", []byte(memberFile), p1.Rev); !errors.Is(err, fleet.ErrStale) {
		t.Errorf("a push replacing revision %d after %d: %v, want a stale push", p1.Rev, p2.Rev, err)
	}
	if _, err := fleet.Push(ctx, client("hv1"), "fleet.toml", []byte(memberFile), 0); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("a host's push: %v, want permission denied", err)
	}
	bad := strings.Replace(memberFile, "memory = 1024", "memory = 256", 1)
	if _, err := fleet.Push(ctx, root, "fleet.toml", []byte(bad), 0); err == nil || !strings.Contains(err.Error(), "more than its memory = 256") {
		t.Errorf("a push over a host's memory: %v", err)
	}
	st, err := fleet.Load(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if st.FileRev != p2.Rev || !bytes.Equal(st.File, []byte(memberFile+"# a comment\n")) {
		t.Errorf("the fleet's file is at %d, want %d, the second push's", st.FileRev, p2.Rev)
	}
}

// recorder stands for today's apply in the member's tests: the real one is
// proven by test/fleet with real VMs.
type recorder struct {
	mu    sync.Mutex
	parts []string // the part file at each apply
}

func (r *recorder) apply(_ context.Context, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if _, err := config.Parse(file, b); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.parts = append(r.parts, string(b))
	return nil
}

func (r *recorder) last() (string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.parts) == 0 {
		return "", 0
	}
	return r.parts[len(r.parts)-1], len(r.parts)
}

// TestMember: a host applies its part when it changes, reports it, keeps
// everything while etcd is gone, and comes back to it.
func TestMember(t *testing.T) {
	c, dir, client := cluster(t)
	root := client("root")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	file := filepath.Join(t.TempDir(), "infra.toml")
	os.WriteFile(file, []byte(memberFile), 0o644)
	localFile := filepath.Join(t.TempDir(), "run", "fleet.json")
	local := func() (l fleet.Local) {
		b, _ := os.ReadFile(localFile)
		json.Unmarshal(b, &l)
		return l
	}
	var log testenv.SyncBuffer
	rec := &recorder{}
	m := &fleet.Member{Client: client("hv1"), Name: "hv1", File: file, Certs: fleet.Certs{Dir: dir, Name: "hv1"},
		Local: func(*config.Infra) string { return localFile },
		Apply: rec.apply, Version: "test", Log: &log, LeaseTTL: 2, Every: time.Second,
		Observe: func(string) ([]fleet.VMStatus, error) {
			return []fleet.VMStatus{{Name: "b", State: "running", Ready: true}}, nil
		}}
	if err := m.Run(ctx); err == nil || !strings.Contains(err.Error(), "is not a fleet part") {
		t.Fatalf("a member over the user's own file: %v, want a refusal", err)
	}
	os.Remove(file)

	mctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- m.Run(mctx) }()
	defer func() { stop(); <-done }()

	p, err := fleet.Push(ctx, root, "fleet.toml", []byte(memberFile), 0)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "hv1 applies its part and says so", func() bool {
		st, err := fleet.Load(ctx, root)
		return err == nil && st.Hosts["hv1"].Applied == p.Rev && st.Alive["hv1"]
	})
	part, n := rec.last()
	in, err := config.Parse("part", []byte(part))
	if err != nil {
		t.Fatal(err)
	}
	if len(in.VMs) != 1 || in.VMs[0].Name != "b" || in.Part.Host != "hv1" || in.Part.Revision != p.Rev {
		t.Errorf("hv1's part has %d VMs, part %+v; want b alone, of revision %d", len(in.VMs), in.Part, p.Rev)
	}

	// A change elsewhere in the file is a new part (its revision too).
	p2, err := fleet.Push(ctx, root, "fleet.toml", []byte(memberFile+"[vm.c]\nsubnet = \"10.3.0.0/24\"\nmemory = 512\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "hv1 applies the second push", func() bool { _, k := rec.last(); return k > n })
	if p2.Placed["c"] != "hv1" {
		t.Errorf("c placed on %q, want hv1 (the most room)", p2.Placed["c"])
	}

	// etcd gone: nothing applied, the part kept, the loss said.
	_, n = rec.last()
	c.Kill("etcd1")
	waitUntil(t, "hv1 to say it lost etcd", func() bool { return strings.Contains(log.String(), "etcd is unreachable") })
	if _, k := rec.last(); k != n {
		t.Errorf("hv1 applied %d times without etcd", k-n)
	}
	if b, err := os.ReadFile(file); err != nil || !strings.Contains(string(b), `vms = ["b", "c"]`) {
		t.Errorf("hv1's part without etcd: %v\n%s", err, b)
	}
	if l := local(); l.Host != "hv1" || l.Applied != p2.Rev || l.EtcdLost == nil || time.Since(*l.EtcdLost) > time.Minute {
		t.Errorf("without etcd hv1 says on its disk %+v; want hv1, revision %d, etcd lost just now", l, p2.Rev)
	}
	c.Restart("etcd1")
	waitUntil(t, "hv1 to say etcd is back", func() bool { return strings.Contains(log.String(), "etcd is back") })
	waitUntil(t, "hv1 to say on its disk that etcd is back", func() bool { l := local(); return l.EtcdLost == nil && l.Applied == p2.Rev })
	waitUntil(t, "hv1 alive again", func() bool {
		st, err := fleet.Load(ctx, root)
		return err == nil && st.Alive["hv1"]
	})
}

// TestWatchCompacted: a member watching from a revision etcd compacted
// away reads everything again at once, instead of waiting.
func TestWatchCompacted(t *testing.T) {
	_, _, client := cluster(t)
	root := client("root")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last int64
	for range 5 {
		r, err := root.Put(ctx, fleet.StatusKey("hv1"), "{}")
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	if _, err := root.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	m := &fleet.Member{Client: client("hv1"), Name: "hv1", Every: time.Minute, Log: &testenv.SyncBuffer{}}
	start := time.Now()
	m.Wait(ctx, 1)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("a watch from a compacted revision returned after %s, want at once", d)
	}
}

func waitUntil(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
