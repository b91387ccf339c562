package cli

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// fleetInit runs fleet init in-process, with cobra's flag parsing.
func fleetInit(args ...string) (string, error) {
	var out, errw bytes.Buffer
	cc := fleetInitCmd().cobra(strings.NewReader(""), &out, &errw)
	cc.SilenceErrors, cc.SilenceUsage = true, true
	cc.SetArgs(args)
	err := cc.Execute()
	return out.String(), err
}

func TestFleetInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	args := []string{"--dir", dir, "--hosts", "hv1,hv2", "--members", "etcd1=192.168.1.11,etcd1=etcd1.lan,etcd2=192.168.1.12"}
	out, err := fleetInit(args...)
	if err != nil {
		t.Fatalf("fleet init: %v", err)
	}
	for _, want := range []string{
		"made  " + dir + "/ca.crt, ca.key: the CA\n",
		"made  " + dir + "/etcd1.crt, etcd1.key: etcd member at 192.168.1.11, etcd1.lan\n",
		"made  " + dir + "/hv2.crt, hv2.key: host\n",
		"made  " + dir + "/root.crt, root.key: the admin (etcd's root)\n",
		"keep " + dir + "/ca.key with you",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var got []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		got = append(got, e.Name())
	}
	want := []string{"ca.crt", "ca.key", "etcd1.crt", "etcd1.key", "etcd2.crt", "etcd2.key", "hv1.crt", "hv1.key", "hv2.crt", "hv2.key", "root.crt", "root.key"}
	if !slices.Equal(got, want) {
		t.Errorf("files: got %v, want %v", got, want)
	}

	// Again, with a host added: only it is made.
	out, err = fleetInit(append(args[:3:3], "hv1,hv2,hv3", args[4], args[5])...)
	if err != nil {
		t.Fatalf("fleet init again: %v", err)
	}
	if n := strings.Count(out, "made "); n != 1 || !strings.Contains(out, "made  "+dir+"/hv3.crt") {
		t.Errorf("again with hv3: got %d made, want hv3's only:\n%s", n, out)
	}
}

func TestFleetInitRefuses(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--hosts", "hv1", "--members", "etcd1"}, `"etcd1": give NAME=ADDR`},
		{[]string{"--hosts", "hv1", "--members", "etcd1="}, `give NAME=ADDR`},
		{[]string{"--hosts", "HV1"}, `"HV1" is not a valid name`},
		{[]string{"--hosts", "../x"}, `is not a valid name`},
		{[]string{"--hosts", "root"}, `the admin's name`},
		{[]string{"--hosts", "hv1", "--members", "hv1=192.168.1.11"}, `give members names of their own`},
		{[]string{"--hosts", "hv1", "--members", "ca=192.168.1.11"}, `"ca" names the CA's own files`},
		{[]string{"--hosts", "hv1", "--etcd", "http://192.168.1.11:2379"}, `give https:// URLs`},
		{[]string{"--hosts", "hv1", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "certs")
		_, err := fleetInit(append([]string{"--dir", dir}, tt.args...)...)
		if err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("fleet init %v: got %v, want a usage error with %q", tt.args, err, tt.want)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("fleet init %v: made %s, want nothing made", tt.args, dir)
		}
	}
}

// TestFleetInitEtcd runs fleet init --etcd against a real etcd cluster
// and checks that etcd then enforces the hosts' roles.
func TestFleetInitEtcd(t *testing.T) {
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s %v", out, err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	// 127.0.0.1 too: the members' connections to each other come from
	// lo's first address (package fleettest).
	initArgs := []string{"--dir", dir, "--hosts", "hv1,hv2",
		"--members", "etcd1=127.0.0.11,etcd1=127.0.0.1,etcd2=127.0.0.12,etcd2=127.0.0.1,etcd3=127.0.0.13,etcd3=127.0.0.1"}
	if _, err := fleetInit(initArgs...); err != nil {
		t.Fatal(err)
	}
	var ms []fleettest.Member
	for i, name := range []string{"etcd1", "etcd2", "etcd3"} {
		ms = append(ms, fleettest.Member{Name: name, IP: netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)}), Netns: ns})
	}
	c := fleettest.Start(t, dir, ms)

	connect = func(endpoints []string, certs fleet.Certs) (*clientv3.Client, error) {
		tc, err := certs.TLS()
		if err != nil {
			return nil, err
		}
		return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second,
			DialOptions: []grpc.DialOption{fleettest.Dialer(ns)}})
	}
	t.Cleanup(func() { connect = fleet.Connect })
	etcd := strings.Join(c.Endpoints(), ",")
	for range 2 { // the second with authentication on already
		out, err := fleetInit(append(initArgs, "--etcd", etcd)...)
		if err != nil {
			t.Fatalf("fleet init --etcd: %v", err)
		}
		if want := "users root and hv1, hv2, authentication on"; !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hv1 := fleettest.Client(t, ns, c.Endpoints(), fleet.Certs{Dir: dir, Name: "hv1"})
	if _, err := hv1.Put(ctx, fleet.StatusKey("hv1"), "{}"); err != nil {
		t.Errorf("hv1 writes its status: %v", err)
	}
	if _, err := hv1.Put(ctx, fleet.DesiredKey, "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("hv1 writes the desired file: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}
