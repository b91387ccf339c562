package cli

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestEgress: a VM with an egress list reaches its names and nothing else
// on the internet, over IPv4 and IPv6, with microvm host answering its
// questions on its gateway, as it does on a real host; the others keep
// the whole internet. check's matrix proves it, plan -v shows the lists,
// status and info the addresses it may reach. Without microvm host, the
// VM reaches nothing by name; without the list, it reaches the internet
// again.
func TestEgress(t *testing.T) {
	testenv.NeedCommands(t, "ping")
	run := testenv.ShortDir(t)
	src := fmt.Sprintf(`[host]
uplink = "eth0"
run_dir = %q
[host.tailscale]
enabled = false

[vm.web]
subnet = "10.5.0.0/24"
dns = "%s"
egress = ["%s"]

[vm.db]
subnet = "10.6.0.0/24"
dns = "%s"
`, run, sandbox.DNSAddr, sandbox.ListedName, sandbox.DNSAddr6)
	file := writeFile(t, src)
	sb, in := newSandbox(t, file)
	addUsers(t, in)
	bin := testenv.Binaries(t)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", file)
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")

	// microvm host, as microvm-host.service runs it.
	var log testenv.SyncBuffer
	host := sandbox.Command(sb.Host, bin, "host", "-f", file)
	host.Stdout, host.Stderr = &log, &log
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- host.Wait() }()
	stopHost := func() {
		if host.Process != nil {
			host.Process.Signal(syscall.SIGTERM)
			<-exited
			host.Process = nil
		}
	}
	defer func() {
		stopHost()
		t.Logf("microvm host's log:\n%s", log.String())
	}()
	for began := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if _, err := sandbox.Resolve(sb.VMs["web"], web.Gateway, sandbox.ListedName, false); err == nil {
			break
		}
		if time.Since(began) > 30*time.Second {
			t.Fatalf("web's gateway does not answer 30 s after microvm host started")
		}
	}

	r := check.Run(in, sandbox.Prober{S: sb}, sb.Target())
	var b bytes.Buffer
	r.Print(&b)
	t.Logf("measured with stand-ins:\n%s", b.String())
	if !r.OK() {
		t.Errorf("a promise does not hold:\n%s", b.String())
	}
	for _, c := range []struct{ row, want string }{
		{"web", fmt.Sprintf("names only: %s ok, seen as %s; %s, dns %s, %s blocked", sandbox.ListedName, sandbox.UplinkAddr.Addr(), sandbox.InternetAddr, sandbox.DNSAddr, sandbox.UnlistedName)},
		{"web" + check.Suffix6, fmt.Sprintf("names only: %s ok, seen as %s; %s, %s blocked", sandbox.ListedName, sandbox.UplinkAddr6.Addr(), sandbox.InternetAddr6, sandbox.UnlistedName)},
		{"db", "ok, seen as " + sandbox.UplinkAddr.Addr().String()},
	} {
		if got := r.Cells[c.row]["internet"]; got.Text != c.want {
			t.Errorf("check's %s to the internet: %q, want %q", c.row, got.Text, c.want)
		}
	}
	if !strings.Contains(log.String(), fmt.Sprintf("egress: web asked for %s (", sandbox.UnlistedName)) || !strings.Contains(log.String(), "), which its egress list does not name: NXDOMAIN") {
		t.Errorf("microvm host does not log the refusal:\n%s", log.String())
	}

	// What the operator reads.
	out := mustRun(t, sb.Host, "plan", "-v", "--host-only", "-f", file)
	for _, want := range []string{
		fmt.Sprintf("#   egress %s (web): %s:10:11", sandbox.ListedName, file),
		fmt.Sprintf("#   web: %s (asks its gateway %s, which asks %s)", sandbox.ListedName, web.Gateway, sandbox.DNSAddr),
		`"br-web" . 10.5.0.1 . udp . 53`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan -v lacks %q:\n%s", want, out)
		}
	}
	for _, args := range [][]string{{"status", "--host", "-f", file}, {"info", "-f", file, "web"}} {
		out := mustRun(t, sb.Host, args...)
		for _, want := range []string{"reachable now: " + sandbox.ListedName + " ", sandbox.NameAddrs[0].String() + " (", sandbox.NameAddrs[1].String() + " ("} {
			if !strings.Contains(out, want) {
				t.Errorf("%s lacks %q:\n%s", args[0], want, out)
			}
		}
	}

	// Fail closed: without microvm host web reaches nothing by name, and
	// still nothing else.
	stopHost()
	if got, err := sandbox.Resolve(sb.VMs["web"], web.Gateway, sandbox.ListedName, false); err == nil {
		t.Errorf("without microvm host, web resolves %s: %v", sandbox.ListedName, got)
	}
	if res := sandbox.TCP(sb.VMs["web"], netip.AddrPortFrom(sandbox.InternetAddr, sandbox.Port)); res.Reached {
		t.Error("without microvm host, web reaches the internet server by address")
	}
	// And the list is what closed it: without it, web has the internet.
	mustRun(t, sb.Host, "apply", "--host-only", "-f", writeFile(t, strings.Replace(src, "egress = ", "# egress = ", 1)))
	if res := sandbox.TCP(sb.VMs["web"], netip.AddrPortFrom(sandbox.InternetAddr, sandbox.Port)); !res.Reached {
		t.Errorf("without its egress list, web does not reach the internet: %v", res.Err)
	}
}
