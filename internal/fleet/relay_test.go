package fleet

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

func TestCommonBase(t *testing.T) {
	tests := []struct {
		a, b []string
		want string
	}{
		{nil, nil, ""},
		{[]string{"move-1"}, nil, ""},
		{nil, []string{"move-1"}, ""},
		{[]string{"move-1", "move-2"}, []string{"move-1"}, "move-1"},
		{[]string{"move-1", "move-2"}, []string{"move-2"}, "move-2"},
		{[]string{"move-1", "move-2", "move-3"}, []string{"move-1", "move-2"}, "move-2"},
		{[]string{"move-1"}, []string{"move-2"}, ""},
		{[]string{"before", "move-1"}, []string{"before"}, ""}, // only a move's
	}
	for _, tt := range tests {
		if got := CommonBase(tt.a, tt.b); got != tt.want {
			t.Errorf("CommonBase(%q, %q) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestRelayNames: names that are not a VM's or a move snapshot's never
// reach a remote shell.
func TestRelayNames(t *testing.T) {
	ssh := []string{"/nonexistent/ssh"}
	tests := []struct{ vm, snap, base, want string }{
		{"vm1; rm -rf /", "move-1", "", "is not a VM name"},
		{"vm1", "move-1 --x", "", "not the name of a move's snapshot"},
		{"vm1", "move-2", "$(id)", "not the name of a move's snapshot"},
		{"vm1", "snap", "", "not the name of a move's snapshot"},
	}
	for _, tt := range tests {
		_, err := Relay(context.Background(), ssh, "a", "b", "microvm", tt.vm, tt.snap, tt.base)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Relay(%q, %q, %q): got %v, want %q", tt.vm, tt.snap, tt.base, err, tt.want)
		}
	}
	if _, err := RemoteSnapshots(context.Background(), ssh, "a", "microvm", "../x"); err == nil || !strings.Contains(err.Error(), "is not a VM name") {
		t.Errorf("RemoteSnapshots(../x): got %v", err)
	}
	if _, err := Relay(context.Background(), nil, "a", "b", "microvm", "vm1", "move-1", ""); err == nil || !strings.Contains(err.Error(), "no ssh command") {
		t.Errorf("Relay without an ssh command: got %v", err)
	}
}

// relayHost is one host of the relay test: an infra.toml on its own pool,
// its datasets made as apply makes them, and an sshd whose sessions read
// that file.
type relayHost struct {
	in   *config.Infra
	sshd *sandbox.SSHD
}

func newRelayHost(t *testing.T, pool *zfstest.Pool, vm, sshDir, ns string, addr netip.Addr) relayHost {
	t.Helper()
	file := filepath.Join(pool.Dir, "infra.toml")
	body := "[host]\nuplink = \"eth0\"\nstate_dir = \"" + filepath.Join(pool.Dir, "state") + "\"\nrun_dir = \"" + filepath.Join(pool.Dir, "run") +
		"\"\nstorage = \"zfs\"\nzfs_dataset = \"" + pool.Name + "/microvms\"\n\n[vm." + vm + "]\nsubnet = \"10.1.0.0/24\"\n"
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	d, err := storage.For(in.Host).Diff(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.Setup {
		if err := a.Apply(); err != nil {
			t.Fatal(err)
		}
	}
	s, err := sandbox.StartSSHD(sshDir, ns, addr, config.EnvFile+"="+file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return relayHost{in: in, sshd: s}
}

// TestRelay moves a VM's data between two hosts for real: two zfs-fuse
// pools, an sshd for each in a namespace of the test, the microvm binary
// on both, and the mover's ssh client in the namespace too. The whole
// dataset travels first, then only what changed; the data arrives intact;
// a failure on either side is reported with what that side said, and
// changes nothing on the target.
func TestRelay(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ssh", "ssh-keygen", "/usr/sbin/sshd", "nsenter")
	pools := zfstest.Pools(t, 2)
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s", out)
	}
	bin := testenv.Binaries(t)
	for _, c := range []string{"send", "receive"} {
		if out, _ := exec.Command(bin, "help", "fleet", c).CombinedOutput(); !strings.Contains(string(out), "Usage: microvm fleet "+c) {
			t.Fatalf("microvm has no fleet %s command (internal/cli registers fleetSendCmd and fleetReceiveCmd under fleet); microvm help fleet %s:\n%s", c, c, out)
		}
	}
	sshDir := t.TempDir()
	a := newRelayHost(t, pools[0], "vm1", sshDir, ns, netip.MustParseAddr("127.0.0.1"))
	b := newRelayHost(t, pools[1], "other", sshDir, ns, netip.MustParseAddr("127.0.0.2"))
	ssh := a.sshd.Client(ns)
	src, dst := a.sshd.Target(), b.sshd.Target()
	vmA, vmB := a.in.Host.Departed("vm1"), b.in.Host.Departed("vm1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	write := func(rel string, data []byte) {
		t.Helper()
		path := filepath.Join(vmA.StateDir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snapshots := func(host string) []string {
		t.Helper()
		snaps, err := RemoteSnapshots(ctx, ssh, host, bin, "vm1")
		if err != nil {
			t.Fatal(err)
		}
		return snaps
	}
	relay := func(snap string) int64 {
		t.Helper()
		base := CommonBase(snapshots(src), snapshots(dst))
		n, err := Relay(ctx, ssh, src, dst, bin, "vm1", snap, base)
		if err != nil {
			t.Fatalf("relaying %s (base %q): %v", snap, base, err)
		}
		return n
	}

	big := make([]byte, 2<<20)
	rand.Read(big)
	write("var/lib/big", big)
	write("etc/hostname", []byte("vm1\n"))
	write("var/gone", []byte("deleted before the second move"))
	odd := filepath.Join(vmA.VarDir, "odd")
	write("var/odd", []byte("odd"))
	if err := os.Chown(odd, 4321, 8765); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(odd, 0o2741); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../var/lib/big", filepath.Join(vmA.EtcDir, "link")); err != nil {
		t.Fatal(err)
	}

	whole := relay("move-1")
	if whole < int64(len(big)) {
		t.Errorf("the whole dataset took %d bytes, less than its %d random bytes", whole, len(big))
	}
	sameTree(t, "whole", vmA.StateDir, vmB.StateDir)

	write("etc/hostname", []byte("changed\n"))
	write("var/new", []byte("new"))
	if err := os.Remove(filepath.Join(vmA.VarDir, "gone")); err != nil {
		t.Fatal(err)
	}
	changes := relay("move-2")
	if changes >= whole/2 {
		t.Errorf("the changes took %d bytes, the whole dataset %d: not an incremental send", changes, whole)
	}
	sameTree(t, "incremental", vmA.StateDir, vmB.StateDir)
	t.Logf("relayed %d bytes whole, %d bytes of changes", whole, changes)
	if got, want := snapshots(src), []string{"move-1", "move-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("source's move snapshots: got %q, want %q", got, want)
	}
	if got, want := snapshots(dst), []string{"move-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("target's move snapshots: got %q, want %q", got, want)
	}

	// Failures: on the receiving side (a whole stream over its copy), and
	// on the sending side (a base it does not have).
	write("etc/hostname", []byte("not to arrive\n"))
	before := tree(t, vmB.StateDir)
	for _, tt := range []struct{ snap, base, want string }{
		{"move-3", "", "receiving on " + dst + ": microvm fleet receive: receiving vm1: this host has an older copy"},
		{"move-4", "move-9", "sending on " + src + ": microvm fleet send: sending vm1: it has no snapshot move-9"},
	} {
		_, err := Relay(ctx, ssh, src, dst, bin, "vm1", tt.snap, tt.base)
		t.Logf("relaying %s (base %q): %v", tt.snap, tt.base, err)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("relaying %s (base %q): got %v, want an error with %q", tt.snap, tt.base, err, tt.want)
		}
		if after := tree(t, vmB.StateDir); !reflect.DeepEqual(after, before) {
			t.Errorf("relaying %s (base %q) changed the target's data", tt.snap, tt.base)
		}
	}
	if got, want := snapshots(dst), []string{"move-2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("target's move snapshots after the failures: got %q, want %q", got, want)
	}
}

// tree describes every file under dir: type, mode, owner, and its content
// (a digest of it) or link target.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", info.Mode(), st.Uid, st.Gid)
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case info.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d bytes sha256 %x", len(b), sha256.Sum256(b))
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, step, a, b string) {
	t.Helper()
	ta, tb := tree(t, a), tree(t, b)
	for k, v := range ta {
		if tb[k] != v {
			t.Errorf("%s: %s: %s on the source, %q on the target", step, k, v, tb[k])
		}
	}
	for k, v := range tb {
		if _, ok := ta[k]; !ok {
			t.Errorf("%s: %s: not on the source, %s on the target", step, k, v)
		}
	}
}

// TestRemoteSnapshotsOutput: what a host lists is checked before the
// mover uses it as a word of another command line (a stand-in for ssh
// prints it here; TestRelay lists real ones).
func TestRemoteSnapshotsOutput(t *testing.T) {
	tests := []struct {
		out  string
		want []string
		err  string
	}{
		{"", nil, ""},
		{"move-1\nmove-2\n", []string{"move-1", "move-2"}, ""},
		{"move-1\nmove-2; reboot\n", nil, "not the name of a move's snapshot"},
		{"before-upgrade\n", nil, "not the name of a move's snapshot"},
	}
	for _, tt := range tests {
		ssh := []string{"sh", "-c", `printf "$0"`, tt.out}
		got, err := RemoteSnapshots(context.Background(), ssh, "host", "microvm", "vm1")
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("listing %q: got %q, %v; want an error with %q", tt.out, got, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("listing %q: got %q, %v; want %q", tt.out, got, err, tt.want)
		}
	}
}
