package hostpart_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestHost runs `microvm host` as microvm-host.service would at boot, in a
// sandbox whose uplink is not there yet: it waits, saying why to systemd
// (a NOTIFY_SOCKET of the test's), applies the host part once the uplink
// comes, mounts the directory a VM had before the reboot nosuid,nodev
// again (a device node its guest left there stays inert), says READY=1,
// and then repairs a flushed ruleset within a second,
// which its log and status --host report. SIGTERM stops it and leaves the
// host part.
func TestHost(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
	bin := testenv.Binaries(t)
	dir := testenv.ShortDir(t)
	file := filepath.Join(dir, "infra.toml")
	src := fmt.Sprintf("[host]\nuplink = \"wan0\"\nstate_dir = %q\nrun_dir = %q\n[host.tailscale]\nenabled = false\n"+
		"[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n", dir+"/state", dir+"/run")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	// vm1 ran before the reboot: its guest left a device node (/dev/zero's
	// numbers) in its /var, which opens on the plain mount of the state.
	vm1, _ := in.VM("vm1")
	if err := os.MkdirAll(vm1.VarDir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(vm1.StateDir, 0o700)
	os.WriteFile(vm1.Marker(), []byte("microvm VM vm1\n"), 0o600)
	dev := filepath.Join(vm1.VarDir, "zero")
	if err := syscall.Mknod(dev, syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Open(dev); err != nil {
		t.Fatalf("the device opens before (the test's premise): %v", err)
	} else {
		f.Close()
	}

	// The sandbox's own uplink is eth0; wan0, the file's, comes later.
	withEth0 := *in
	withEth0.Host.Uplink = "eth0"
	sb, err := sandbox.New(&withEth0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })

	notify := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	messages := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			messages <- string(buf[:n])
		}
	}()
	// notified waits for a message with want, failing after timeout.
	notified := func(want string, timeout time.Duration) string {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case m := <-messages:
				if strings.Contains(m, want) {
					return m
				}
			case <-deadline:
				t.Fatalf("no %q from microvm host in %s", want, timeout)
			}
		}
	}

	var log testenv.SyncBuffer
	cmd := sandbox.Command(sb.Host, bin, "host", "-f", file)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		t.Logf("microvm host's log:\n%s", log.String())
	}()

	waiting := notified("STATUS=waiting", 10*time.Second)
	if !strings.Contains(waiting, `uplink "wan0" does not exist`) {
		t.Errorf("while it waits it says %q; want why", waiting)
	}
	select {
	case m := <-messages:
		if strings.Contains(m, "READY=1") {
			t.Fatal("READY=1 without an uplink")
		}
	case <-time.After(500 * time.Millisecond):
	}
	mvm := func(args ...string) string {
		t.Helper()
		out, err := sandbox.Command(sb.Host, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("microvm %s: %s %v", strings.Join(args, " "), out, err)
		}
		return string(out)
	}
	if out := mvm("status", "--host", "-f", file); !strings.Contains(out, "firewall: not kept") {
		t.Errorf("status --host before it is ready:\n%s", out)
	}

	// The uplink comes up late, as some do at boot.
	if out, err := sandbox.Command(sb.Host, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0peer").CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	notified("READY=1", 30*time.Second)
	if out := testenv.WithoutDiskWarning(mvm("plan", "--host-only", "-f", file)); out != "no changes\n" {
		t.Errorf("plan after microvm host is ready:\n%s", out)
	}
	// vm1's directory is on a nosuid,nodev mount again, in microvm
	// host's mount namespace (its own here: ip netns exec makes one), seen
	// through its root: the guest's node does not open.
	if f, err := os.Open(fmt.Sprintf("/proc/%d/root%s", cmd.Process.Pid, dev)); !errors.Is(err, os.ErrPermission) {
		if f != nil {
			f.Close()
		}
		t.Errorf("after microvm host started, opening vm1's device node: %v; want permission denied", err)
	}
	if !strings.Contains(log.String(), "mount --bind "+vm1.StateDir+" ") {
		t.Errorf("the log does not say it mounted %s", vm1.StateDir)
	}

	sandboxtest.FlushHealed(t, sb.Host)
	notified("STATUS=keeping table inet microvm; 1 repairs", 5*time.Second)
	if !strings.Contains(log.String(), "firewall: table inet microvm is missing; restored table inet microvm in ") {
		t.Errorf("the log does not say what it repaired")
	}
	out := mvm("status", "--host", "-f", file)
	for _, want := range []string{"host part: applied", "firewall: kept by microvm-host.service, pid ", "1 repairs; the last ", "table inet microvm is missing; restored in "} {
		if !strings.Contains(out, want) {
			t.Errorf("status --host lacks %q:\n%s", want, out)
		}
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("microvm host after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("microvm host did not stop on SIGTERM")
	}
	if out := testenv.WithoutDiskWarning(mvm("plan", "--host-only", "-f", file)); out != "no changes\n" {
		t.Errorf("stopping microvm host changed the host part; plan:\n%s", out)
	}
}
