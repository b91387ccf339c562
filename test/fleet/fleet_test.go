// Package fleet runs a fleet of three hosts on one machine (docs/fleet.md):
// each host a sandbox of network namespaces with its own state_dir,
// run_dir and ZFS datasets, joined by a LAN of their own; a real etcd
// cluster of three members, one on each host, over TLS with client
// certificates; sshd on each host for the admin; two real microVMs under
// QEMU. It pushes the fleet's file, proves the placement and the VMs from
// inside, moves a VM with its data and its Tailscale route, kills a host
// and then etcd, and refuses a stale push.
package fleet

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/cli"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/tailscale/tailscaletest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// host is one host of the test's fleet.
type host struct {
	name, addr string
	sb         *sandbox.Sandbox
	part       string // the part file its daemon keeps
	state, run string
	log        string
	daemon     *exec.Cmd
	ts         *tailscaletest.Fake
}

func TestFleet(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "etcd", "ssh", "ssh-keygen", "/usr/sbin/sshd")
	img := imagetest.Debian(t)
	pool := zfstest.New(t)
	bin := testenv.Binaries(t)
	for d := pool.Dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // the VMM's user opens the kernel under state_dir
	}
	dir := testenv.ShortDir(t)
	certs := filepath.Join(dir, "certs")

	// The fleet's file: three hosts, vm2 pinned to hv2, vm1 placed.
	hosts := []*host{{name: "hv1"}, {name: "hv2"}, {name: "hv3"}}
	var b strings.Builder
	b.WriteString("[host]\nuplink = \"eth0\"\naccel = \"tcg\"\nstorage = \"zfs\"\n[host.tailscale]\nenabled = true\n")
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\ndisk = \"64M\"\n")
	mem := map[string]int{"hv1": 1024, "hv2": 1024, "hv3": 768}
	for i, h := range hosts {
		h.addr = fmt.Sprintf("192.168.77.%d", 11+i)
		h.state = filepath.Join(pool.Dir, h.name)
		h.run = testenv.RunDir(t, "mf"+h.name[2:])
		h.part = filepath.Join(dir, h.name+".toml")
		h.log = filepath.Join(dir, h.name+".log")
		sock := filepath.Join(dir, h.name+"-tailscaled.sock")
		h.ts = tailscaletest.Start(t, sock, "Running", nil, nil)
		fmt.Fprintf(&b, "[fleet.host.%s]\naddress = %q\nmemory = %d\nstate_dir = %q\nrun_dir = %q\nzfs_dataset = %q\ntailscale_socket = %q\n",
			h.name, h.addr, mem[h.name], h.state, h.run, pool.Name+"/"+h.name, sock)
	}
	b.WriteString("[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\nhost = \"hv2\"\n")
	fleetFile := filepath.Join(dir, "fleet.toml")
	if err := os.WriteFile(fleetFile, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	// Each host: its sandbox, its datasets and the cached image, its leg
	// of the fleet's LAN, its sshd.
	lan := testenv.NetNS(t)
	if err := exec.Command("ip", "-n", lan, "link", "add", "br0", "type", "bridge").Run(); err != nil {
		t.Fatal(err)
	}
	exec.Command("ip", "-n", lan, "link", "set", "br0", "up").Run()
	var members []fleettest.Member
	for i, h := range hosts {
		in, err := config.Parse(h.name, config.WithPart([]byte(b.String()), config.Part{Host: h.name}))
		if err != nil {
			t.Fatal(err)
		}
		h.sb, err = sandbox.New(in)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.sb.Close() })
		leg := fmt.Sprintf("lan%d", i)
		for _, args := range [][]string{
			{"-n", h.sb.Host, "link", "add", "fleet0", "type", "veth", "peer", "name", leg, "netns", lan},
			{"-n", h.sb.Host, "addr", "add", h.addr + "/24", "dev", "fleet0"},
			{"-n", h.sb.Host, "link", "set", "fleet0", "up"},
			{"-n", lan, "link", "set", leg, "master", "br0", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %s: %s", strings.Join(args, " "), out)
			}
		}
		// The host part makes the datasets; the image is the test's
		// cached one, bind-mounted in instead of built again.
		hostOnly := filepath.Join(dir, h.name+"-host.toml")
		os.WriteFile(hostOnly, config.WithPart([]byte(b.String()), config.Part{Host: h.name}), 0o644)
		if err := sandbox.Do(h.sb.Host, func() error {
			var out strings.Builder
			if code := cli.Main([]string{"apply", "--host-only", "-f", hostOnly}, strings.NewReader(""), &out, &out); code != 0 {
				return fmt.Errorf("apply --host-only on %s: exit %d\n%s", h.name, code, out.String())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		imgDir := in.Host.ImageDir("debian")
		os.MkdirAll(imgDir, 0o755)
		if err := unix.Mount(img.ImageDir("debian"), imgDir, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(imgDir, unix.MNT_DETACH) })
		members = append(members, fleettest.Member{Name: fmt.Sprintf("etcd%d", i+1), IP: netip.MustParseAddr(h.addr), Netns: h.sb.Host})
	}

	// The admin: certificates for the members, the hosts and root; then
	// etcd, and its users and roles.
	// runWith runs microvm on h with env added to the test's.
	runWith := func(h *host, env []string, args ...string) (string, error) {
		cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.sb.Host, "--", bin}, args...)...)
		cmd.Env = append(append(os.Environ(), "MICROVM_FLEET_CERTS="+certs), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	run := func(h *host, args ...string) (string, error) { return runWith(h, nil, args...) }
	must := func(h *host, args ...string) string {
		t.Helper()
		out, err := run(h, args...)
		if err != nil {
			t.Fatalf("on %s: microvm %s: %v\n%s", h.name, strings.Join(args, " "), err, out)
		}
		return out
	}
	var ms []string
	for _, m := range members {
		ms = append(ms, m.Name+"="+m.IP.String())
	}
	must(hosts[0], "fleet", "init", "--dir", certs, "--hosts", "hv1,hv2,hv3", "--members", strings.Join(ms, ","))
	cluster := fleettest.Start(t, certs, members)
	eps := strings.Join(cluster.Endpoints(), ",")
	t.Setenv("MICROVM_ETCD", eps)
	must(hosts[0], "fleet", "init", "--dir", certs, "--hosts", "hv1,hv2,hv3", "--members", strings.Join(ms, ","), "--etcd", eps)

	// sshd on each host; ssh as the admin through the test's key.
	var sshd *sandbox.SSHD
	for _, h := range hosts {
		s, err := sandbox.StartSSHD(filepath.Join(dir, "ssh"), h.sb.Host, netip.MustParseAddr(h.addr), config.EnvFile+"="+h.part)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Stop() })
		sshd = s
	}
	// Every command runs inside a host's namespace already.
	sshCmd := strings.Join(sshd.Client(hosts[0].sb.Host)[3:], " ")
	t.Setenv("MICROVM_FLEET_SSH", sshCmd)

	// The daemons.
	start := func(h *host) {
		logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		h.daemon = exec.Command("nsenter", "--net=/run/netns/"+h.sb.Host, "--", bin, "host", "--fleet", eps, "--name", h.name, "--certs", certs, "-f", h.part)
		h.daemon.Stdout, h.daemon.Stderr = logf, logf
		h.daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := h.daemon.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range hosts {
		start(h)
	}
	t.Cleanup(func() {
		for _, h := range hosts {
			if h.daemon != nil && h.daemon.Process != nil {
				h.daemon.Process.Signal(syscall.SIGTERM)
				h.daemon.Wait()
			}
			if in, err := config.Load(h.part); err == nil {
				for i := range in.VMs {
					supervise.StopDetached(&in.VMs[i], 90*time.Second)
				}
			}
			// A VM moved away left its supervisor's directory behind.
			for _, name := range []string{"vm1", "vm2"} {
				vm := in0(t, b.String(), h.name, name)
				supervise.StopDetached(vm, 30*time.Second)
			}
			if t.Failed() {
				log, _ := os.ReadFile(h.log)
				t.Logf("%s's daemon:\n%s", h.name, supervise.Tail(log, 40))
			}
		}
	})

	// Push: vm2 goes to hv2 (pinned), vm1 to the host with most room, hv1.
	out := must(hosts[0], "fleet", "push", fleetFile)
	t.Logf("fleet push:\n%s", out)
	for _, want := range []string{"placed vm1 on hv1", "placed vm2 on hv2"} {
		if !strings.Contains(out, want) {
			t.Errorf("push output lacks %q", want)
		}
	}
	rev1 := revision(t, out)
	waitStatus(t, func() string { return must(hosts[0], "fleet", "status") }, "vm1 +hv1 +running +ready", "vm2 +hv2 +running +ready")

	// Each VM answers on its host; vm2's status reached from hv1.
	ssh := func(h *host, vm, cmd string) string {
		t.Helper()
		return strings.TrimSpace(must(h, "ssh", "-f", h.part, vm, "--", cmd))
	}
	ssh(hosts[0], "vm1", "echo moved-with-its-data > /var/marker && sync")
	if got := ssh(hosts[1], "vm2", "hostname"); got != "vm2" {
		t.Errorf("vm2's hostname = %q", got)
	}
	if out := must(hosts[0], "status", "-f", hosts[0].part, "vm2"); !strings.Contains(out, "vm2") || !strings.Contains(out, "running") {
		t.Errorf("status vm2 on hv1 (run on hv2):\n%s", out)
	}
	// The daily commands, typed on hv1 for vm2, run on hv2.
	if got := ssh(hosts[0], "vm2", "hostname"); got != "vm2" {
		t.Errorf("ssh vm2 from hv1: hostname = %q", got)
	}
	for _, c := range []struct {
		on   *host
		args []string
		want string
	}{
		{hosts[0], []string{"logs", "--file", hosts[0].part, "vm2"}, "vm2: ready: sshd answers"},
		{hosts[0], []string{"down", "-f", hosts[0].part, "vm2"}, "vm2 stopped"},
		{hosts[1], []string{"status", "-f", hosts[1].part, "vm2"}, "stopped"},
		{hosts[0], []string{"up", "-f", hosts[0].part, "vm2"}, "vm2 started"},
	} {
		if out := must(c.on, c.args...); !strings.Contains(out, c.want) {
			t.Errorf("on %s, microvm %s:\n%s\nwant %q", c.on.name, strings.Join(c.args, " "), out, c.want)
		}
	}
	waitStatus(t, func() string { return must(hosts[0], "fleet", "status") }, "vm2 +hv2 +running +ready")
	if got := hosts[0].ts.Advertised(); !strings.Contains(got, "10.1.0.0/24") {
		t.Errorf("hv1 advertises %q, want vm1's 10.1.0.0/24", got)
	}

	// A push of an old copy is refused; one of the current file passes.
	out = must(hosts[0], "fleet", "push", "--replaces", fmt.Sprint(rev1), fleetFile)
	if out, err := run(hosts[0], "fleet", "push", "--replaces", fmt.Sprint(rev1), fleetFile); err == nil || !strings.Contains(out, "stale push") {
		t.Errorf("a push replacing revision %d after %s was not refused as stale: %v\n%s", rev1, strings.TrimSpace(out), err, out)
	}

	// A move that fails after the stop: the connection to hv3 drops in the
	// middle of the last stream. vm1 runs on hv1 again with its data, the
	// move is forgotten, and the same move run again finishes it (below).
	cut := filepath.Join(dir, "ssh-cut")
	script := fmt.Sprintf(`#!/bin/sh
# The move's ssh, whose second stream into fleet receive is cut short.
case "$*" in *"fleet receive"*--list*) ;; *"fleet receive"*)
	n=$(($(cat %[1]s.count 2>/dev/null || echo 0) + 1)); echo $n > %[1]s.count
	if [ $n = 2 ]; then head -c 4096 | %[2]s "$@"; exit 1; fi
esac
exec %[2]s "$@"
`, cut, sshCmd)
	if err := os.WriteFile(cut, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := runWith(hosts[0], []string{"MICROVM_FLEET_SSH=" + cut}, "move", "vm1", "--to", "hv3"); err == nil || !strings.Contains(out, "vm1 runs on hv1 as before") {
		t.Errorf("a move whose last stream was cut: %v\n%s\nwant a failure that says vm1 runs on hv1 as before", err, out)
	} else {
		t.Logf("move, its last stream cut:\n%s", out)
	}
	waitStatus(t, func() string { return must(hosts[0], "fleet", "status") }, "vm1 +hv1 +running +ready +-")
	if got := ssh(hosts[0], "vm1", "cat /var/marker"); got != "moved-with-its-data" {
		t.Errorf("after the failed move vm1 reads /var/marker = %q on hv1", got)
	}
	if !strings.Contains(hosts[0].ts.Advertised(), "10.1.0.0/24") || strings.Contains(hosts[2].ts.Advertised(), "10.1.0.0/24") {
		t.Errorf("after the failed move hv1 advertises %q and hv3 %q; want 10.1.0.0/24 on hv1 only", hosts[0].ts.Advertised(), hosts[2].ts.Advertised())
	}

	// Move vm1 to hv3: its data comes along, its route follows.
	out = must(hosts[0], "move", "vm1", "--to", "hv3")
	t.Logf("move:\n%s", out)
	if !strings.Contains(out, "moved vm1 from hv1 to hv3: down for") {
		t.Errorf("move output lacks the downtime")
	}
	waitStatus(t, func() string { return must(hosts[0], "fleet", "status") }, "vm1 +hv3 +running +ready")
	if got := ssh(hosts[2], "vm1", "cat /var/marker"); got != "moved-with-its-data" {
		t.Errorf("after the move vm1 reads /var/marker = %q", got)
	}
	waitFor(t, "hv1 to withdraw and hv3 to advertise 10.1.0.0/24", func() bool {
		return !strings.Contains(hosts[0].ts.Advertised(), "10.1.0.0/24") && strings.Contains(hosts[2].ts.Advertised(), "10.1.0.0/24")
	})

	// hv2's daemon dies: the fleet shows it lost when its lease ends; its
	// VM is not started elsewhere.
	syscall.Kill(-hosts[1].daemon.Process.Pid, syscall.SIGKILL)
	hosts[1].daemon.Wait()
	hosts[1].daemon = nil
	waitStatus(t, func() string { return must(hosts[0], "fleet", "status") }, "hv2 +lost", "vm2 +hv2 +host lost")

	// etcd dies: the VMs run on, the hosts say they lost etcd.
	for _, m := range members {
		cluster.Kill(m.Name)
	}
	waitFor(t, "hv3 to say it lost etcd", func() bool {
		log, _ := os.ReadFile(hosts[2].log)
		return strings.Contains(string(log), "etcd is unreachable")
	})
	if got := ssh(hosts[2], "vm1", "cat /var/marker"); got != "moved-with-its-data" {
		t.Errorf("without etcd vm1 reads %q", got)
	}
	if got := ssh(hosts[1], "vm2", "hostname"); got != "vm2" {
		t.Errorf("without etcd and its host's daemon, vm2 answers %q", got)
	}
	// fleet status on hv3 cannot reach etcd, and says what hv3 knows.
	if out, err := runWith(hosts[2], []string{config.EnvFile + "=" + hosts[2].part}, "fleet", "status"); err == nil || !strings.Contains(out, "this host, hv3, runs its part of revision") || !strings.Contains(out, "no answer from etcd since") {
		t.Errorf("fleet status on hv3 without etcd: %v\n%s\nwant a failure that says hv3 runs its part and since when it lost etcd", err, out)
	} else {
		t.Logf("fleet status on hv3 without etcd:\n%s", out)
	}
	cluster.RestartAll()
	waitFor(t, "hv3 to say etcd is back", func() bool {
		log, _ := os.ReadFile(hosts[2].log)
		return strings.Contains(string(log), "etcd is back")
	})
}

// in0 is VM name as host's part would have it, for cleanup.
func in0(t *testing.T, src, host, name string) *config.VM {
	in, err := config.Parse(host, config.WithPart([]byte(src), config.Part{Host: host, VMs: []string{name}}))
	if err != nil {
		t.Fatal(err)
	}
	return &in.VMs[0]
}

// revision reads "pushed revision N" from fleet push's output.
func revision(t *testing.T, out string) int64 {
	var rev int64
	if _, err := fmt.Sscanf(out[strings.Index(out, "pushed revision"):], "pushed revision %d", &rev); err != nil {
		t.Fatalf("no revision in %q", out)
	}
	return rev
}

// waitStatus waits until every pattern (words separated by spaces, as in
// a line of fleet status) matches a line of status().
func waitStatus(t *testing.T, status func() string, patterns ...string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		last = status()
		ok := true
		for _, p := range patterns {
			if !matchLine(last, strings.Fields(strings.ReplaceAll(p, "+", ""))) {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("fleet status never showed %q; last:\n%s", patterns, last)
}

// matchLine: some line has words in this order, each starting a column.
func matchLine(text string, words []string) bool {
	for _, line := range strings.Split(text, "\n") {
		rest := line
		ok := true
		for _, w := range words {
			i := strings.Index(rest, w)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(w):]
		}
		if ok {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Second)
	}
}
