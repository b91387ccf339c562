package tailscale_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/derp/derpserver"
	"tailscale.com/ipn"
	"tailscale.com/net/stunserver"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"

	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// cacheDir keeps the tailscaled the tests build, across runs.
const cacheDir = "/var/cache/microvm-test"

// buildTags leave out of the test's tailscaled every feature that could
// touch the machine outside the test's namespaces or call Tailscale's own
// servers: DNS configuration (/etc/resolv.conf, systemd-resolved over
// D-Bus), log upload, cloud metadata, port mapping on the LAN, captive
// portal checks, system proxies, the TPM, auto-update. Subnet routing,
// netfilter and the local API stay.
var buildTags = []string{
	"ts_omit_dns", "ts_omit_dbus", "ts_omit_resolved", "ts_omit_networkmanager",
	"ts_omit_ssh", "ts_omit_systray", "ts_omit_webbrowser",
	"ts_omit_logtail", "ts_omit_netlog", "ts_omit_portmapper", "ts_omit_debugportmapper",
	"ts_omit_clientupdate", "ts_omit_tpm", "ts_omit_cloud", "ts_omit_aws", "ts_omit_kube",
	"ts_omit_captiveportal", "ts_omit_useproxy", "ts_omit_sdnotify", "ts_omit_syslog",
	"ts_omit_linuxdnsfight", "ts_omit_synology",
}

// tailscaleVersion is the tailscale.com version in go.mod: the tailscaled
// under test is the same release as the client the program uses.
func tailscaleVersion(t *testing.T, goBin string) string {
	out, err := exec.Command(goBin, "list", "-m", "-f", "{{.Version}}", "tailscale.com").Output()
	if err != nil {
		t.Fatalf("reading tailscale.com's version from go.mod: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// tailscaled builds tailscaled from the tailscale.com module with the Go
// toolchain (through the Go module proxy, like any module), once per
// version and tag set, and returns its path.
func tailscaled(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		testenv.Unavailable(t, "needs the go command to build tailscaled")
	}
	version := tailscaleVersion(t, goBin)
	sum := sha256.Sum256([]byte(strings.Join(buildTags, ",")))
	dir := filepath.Join(cacheDir, fmt.Sprintf("tailscaled-%s-%s", version, hex.EncodeToString(sum[:4])))
	bin := filepath.Join(dir, "tailscaled")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".tailscaled-")
	if err != nil {
		t.Fatalf("making the build directory: %v", err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	args := []string{goBin, "install", "-tags", strings.Join(buildTags, ","), "tailscale.com/cmd/tailscaled@" + version}
	// The build takes minutes and the machine is shared: run it niced.
	if nice, err := exec.LookPath("nice"); err == nil {
		args = append([]string{nice, "-n", "15"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building tailscaled %s: %v\n%s", version, err, out)
	}
	t.Logf("built tailscaled %s in %s", version, time.Since(start).Round(time.Second))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "tailscaled"), bin); err != nil {
		t.Fatalf("caching tailscaled: %v", err)
	}
	return bin
}

// control is a tailnet's servers: the tailscale.com module's test control
// server and a DERP relay with a STUN server, all listening inside one
// namespace of the sandbox.
type control struct {
	*testcontrol.Server
	URL string
	log *testenv.SyncBuffer
}

// startControl starts the servers on addr in namespace ns. Their sockets
// are opened in ns, so every connection to them stays in the sandbox.
func startControl(t *testing.T, ns string, addr netip.Addr) *control {
	t.Helper()
	logBuf := &testenv.SyncBuffer{}
	logf := func(format string, args ...any) { fmt.Fprintf(logBuf, format+"\n", args...) }

	ctlLn, derpLn := listen(t, ns, addr), listen(t, ns, addr)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stun := stunserver.New(ctx)
	if err := sandbox.Do(ns, func() error { return stun.Listen(netip.AddrPortFrom(addr, 0).String()) }); err != nil {
		t.Fatalf("STUN server: %v", err)
	}
	go stun.Serve()

	d := derpserver.New(key.NewNode(), logf)
	derp := httptest.NewUnstartedServer(derpserver.Handler(d))
	derp.Listener.Close()
	derp.Listener = derpLn
	derp.StartTLS()
	t.Cleanup(func() { derp.Close(); d.Close() })

	node := &tailcfg.DERPNode{
		Name: "1a", RegionID: 1, HostName: addr.String(), IPv4: addr.String(), IPv6: "none",
		DERPPort:         derpLn.Addr().(*net.TCPAddr).Port,
		STUNPort:         stun.LocalAddr().(*net.UDPAddr).Port,
		InsecureForTests: true, // the DERP server's certificate is httptest's own
	}
	derpMap := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		1: {RegionID: 1, RegionCode: "sandbox", RegionName: "sandbox", Nodes: []*tailcfg.DERPNode{node}},
	}}
	url := "http://" + ctlLn.Addr().String()
	c := &control{
		Server: &testcontrol.Server{DERPMap: derpMap, ExplicitBaseURL: url, AllNodesSameUser: true, Logf: logf},
		URL:    url,
		log:    logBuf,
	}
	srv := &http.Server{Handler: c.Server}
	go srv.Serve(ctlLn)
	t.Cleanup(func() { srv.Close() })
	return c
}

// listen opens a TCP listener on addr in namespace ns.
func listen(t *testing.T, ns string, addr netip.Addr) net.Listener {
	t.Helper()
	var ln net.Listener
	err := sandbox.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listening in %s: %v", ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// node is one tailscaled and its local API.
type node struct {
	name string
	ns   string
	lc   *local.Client
	log  string
}

// startTailscaled runs tailscaled in namespace ns with its TUN interface
// tailscale0 there and its state, socket and logs in dir. It starts logged out and talks only to the control server the test
// logs it in to; TS_PANIC_IF_HIT_MAIN_CONTROL makes sure it never tries
// Tailscale's own.
func startTailscaled(t *testing.T, bin, name, ns, dir string) *node {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, ns: ns, lc: &local.Client{Socket: filepath.Join(dir, "tailscaled.sock"), UseSocketOnly: true}, log: filepath.Join(dir, "tailscaled.log")}
	logFile, err := os.Create(n.log)
	if err != nil {
		t.Fatal(err)
	}
	// tailscaled exits when the read end sees the test process die.
	death, alive, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := sandbox.Command(ns, bin,
		"--tun="+"tailscale0",
		"--statedir="+dir,
		"--socket="+n.lc.Socket,
		"--no-logs-no-support",
		"--syspolicy-file=",
	)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + dir,
		"TS_LOGS_DIR=" + dir,
		"TS_NO_LOGS_NO_SUPPORT=true",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_DISABLE_PORTMAPPER=1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_PARENT_DEATH_FD=3",
	}
	cmd.ExtraFiles = []*os.File{death}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting tailscaled in %s: %v", ns, err)
	}
	death.Close()
	logFile.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM lets tailscaled remove its routes and rules; the
		// namespace goes with the sandbox anyway.
		if d := os.Getenv("MICROVM_TEST_KEEP_TAILSCALED_LOGS"); d != "" {
			exec.Command("cp", n.log, filepath.Join(d, name+".log")).Run()
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		alive.Close()
		if t.Failed() {
			out, _ := os.ReadFile(n.log)
			t.Logf("tailscaled %s log (last 4 KiB):\n%s", name, tail(out, 4096))
		}
	})
	waitFor(t, 30*time.Second, name+"'s local API", func() error {
		_, err := n.lc.StatusWithoutPeers(context.Background())
		return err
	})
	return n
}

// up logs the node in to the control server, as `tailscale up
// --login-server=URL` does, keeping its other settings (the routes the
// program set while it was logged out among them).
func (n *node) up(t *testing.T, controlURL string, acceptRoutes bool) {
	t.Helper()
	ctx := context.Background()
	prefs, err := n.lc.GetPrefs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prefs.ControlURL = controlURL
	prefs.WantRunning = true
	prefs.LoggedOut = false
	prefs.Hostname = n.name
	prefs.CorpDNS = false
	prefs.RouteAll = acceptRoutes
	if err := n.lc.Start(ctx, ipn.Options{UpdatePrefs: prefs}); err != nil {
		t.Fatalf("%s: start: %v", n.name, err)
	}
	if err := n.lc.StartLoginInteractive(ctx); err != nil {
		t.Fatalf("%s: login: %v", n.name, err)
	}
	waitFor(t, 60*time.Second, n.name+" to log in", func() error {
		st, err := n.lc.StatusWithoutPeers(ctx)
		if err != nil {
			return err
		}
		if st.BackendState != ipn.Running.String() || len(st.TailscaleIPs) == 0 {
			return fmt.Errorf("state %s", st.BackendState)
		}
		return nil
	})
}

// addr is the node's tailnet IPv4 address.
func (n *node) addr(t *testing.T) netip.Addr {
	t.Helper()
	st, err := n.lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st.TailscaleIPs {
		if a.Is4() {
			return a
		}
	}
	t.Fatalf("%s has no tailnet IPv4 address", n.name)
	return netip.Addr{}
}

// addr6 is the node's tailnet IPv6 address.
func (n *node) addr6(t *testing.T) netip.Addr {
	t.Helper()
	st, err := n.lc.StatusWithoutPeers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st.TailscaleIPs {
		if a.Is6() {
			return a
		}
	}
	t.Fatalf("%s has no tailnet IPv6 address", n.name)
	return netip.Addr{}
}

// waitFor polls f until it succeeds or the time is up.
func waitFor(t *testing.T, limit time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %v", limit, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
