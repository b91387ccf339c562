package fleet_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/pki"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestMemberAppliesAgainAfterAFailure: a part whose apply failed is not
// the host's any more once the fleet goes back to the part applied
// before it: the host writes and applies that part again (it once took
// it for applied, and kept the failed part).
func TestMemberAppliesAgainAfterAFailure(t *testing.T) {
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s %v", out, err)
	}
	certs := t.TempDir() + "/certs"
	ca, _, err := pki.Open(certs)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("127.0.0.11")
	if _, err := ca.Member("etcd1", []netip.Addr{ip}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Client("root"); err != nil {
		t.Fatal(err)
	}
	c := fleettest.Start(t, certs, []fleettest.Member{{Name: "etcd1", IP: ip, Netns: ns}})
	cli := fleettest.Client(t, ns, c.Endpoints(), fleet.Certs{Dir: certs, Name: "root"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	src := "[host]\nuplink = \"eth0\"\n[fleet.host.hv1]\naddress = \"10.0.0.1\"\nmemory = 4096\n[fleet.host.hv2]\naddress = \"10.0.0.2\"\nmemory = 1024\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n"
	if _, err := fleet.Push(ctx, cli, "fleet.toml", []byte(src), 0); err != nil {
		t.Fatal(err)
	}
	// The host's apply fails whenever its part is empty.
	var mu sync.Mutex
	var applied []string // the parts' VM lists, in order
	with := `vms = ["vm1"]`
	file := t.TempDir() + "/infra.toml"
	m := &fleet.Member{
		Client: cli, Name: "hv1", File: file, Log: io.Discard, Every: 200 * time.Millisecond, LeaseTTL: 5,
		Apply: func(ctx context.Context, file string) error {
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if !strings.Contains(string(b), with) {
				applied = append(applied, "[]")
				return errors.New("this host refuses an empty part")
			}
			applied = append(applied, "[vm1]")
			return nil
		},
		Observe: func(string) ([]fleet.VMStatus, error) { return nil, nil },
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()

	waitApplied := func(what string, want func([]string) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			got := append([]string(nil), applied...)
			mu.Unlock()
			if want(got) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: the host applied %v", what, got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	count := func(parts []string, p string) int {
		n := 0
		for _, q := range parts {
			if q == p {
				n++
			}
		}
		return n
	}
	waitApplied("vm1's part", func(p []string) bool { return count(p, "[vm1]") == 1 })
	if _, err := cli.Put(ctx, fleet.PlacementKey, `{"vm1":"hv2"}`); err != nil {
		t.Fatal(err)
	}
	waitApplied("the empty part, refused", func(p []string) bool { return count(p, "[]") >= 1 })
	if _, err := cli.Put(ctx, fleet.PlacementKey, `{"vm1":"hv1"}`); err != nil {
		t.Fatal(err)
	}
	waitApplied("vm1's part again", func(p []string) bool { return count(p, "[vm1]") == 2 })
	if b, _ := os.ReadFile(file); !strings.Contains(string(b), with) {
		t.Errorf("the part file lacks %s:\n%s", with, b)
	}
}
