package egress

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestAddresses: the addresses of an answer are those of the name asked,
// along its CNAMEs in any order, with the least TTL on the way; records
// of other names (a server's additions) are not.
func TestAddresses(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	m := new(dns.Msg)
	m.Answer = []dns.RR{
		rr("cdn.example.net. 30 IN A 198.51.100.7"),
		rr("deb.debian.org. 300 IN CNAME debian.map.example.net."),
		rr("debian.map.example.net. 120 IN CNAME cdn.example.net."),
		rr("cdn.example.net. 300 IN AAAA 2001:db8::7"),
		rr("other.example.org. 1 IN A 203.0.113.66"),
		rr("deb.debian.org. 300 IN TXT \"not an address\""),
	}
	addrs, ttl := addresses(m, "Deb.Debian.org.")
	if got, want := fmt.Sprint(addrs), "[198.51.100.7 2001:db8::7]"; got != want {
		t.Errorf("addresses: %s, want %s", got, want)
	}
	if ttl != 30*time.Second {
		t.Errorf("ttl %s, want 30s", ttl)
	}
	if addrs, _ := addresses(m, "other.example.com."); len(addrs) != 0 {
		t.Errorf("addresses of a name not in the answer: %v", addrs)
	}
}

// TestNames: a question's name reaches the firewall only if it is a name
// of the list, made of the bytes DNS names are made of.
func TestNames(t *testing.T) {
	list := []string{"deb.debian.org", "*.github.com"}
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"deb.debian.org", true},
		{"api.github.com", true},
		{"github.com", false},
		{"debian.org", false},
		{`a" } ; flush ruleset ; add x { ".github.com`, false},
		{"a b.github.com", false},
		{"", false},
	} {
		if got := validName(tt.name) && listed(list, tt.name); got != tt.want {
			t.Errorf("%q: forwarded %v, want %v", tt.name, got, tt.want)
		}
	}
	lines := addElement(entry{"br-web", netip.MustParseAddr("2001:db8::7")}, "api.github.com", 90*time.Second)
	if got, want := lines[2], `add element inet microvm egress_addrs6 { "br-web" . 2001:db8::7 timeout 90s comment "api.github.com" }`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestResolver runs the resolver in a sandbox's host namespace, beside
// the firewall, with namespaces standing in for a VM with an egress list
// (web) and one without (db), and the sandbox's internet DNS server as
// web's: web reaches its name and its addresses, over IPv4 and IPv6, for
// as long as the TTL says, and nothing else; no one but web gets an
// answer there; the addresses come back after the table is loaded anew;
// and without the resolver web reaches nothing by name.
func TestResolver(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft")
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
`, run, sandbox.DNSAddr, sandbox.ListedName)
	file := filepath.Join(t.TempDir(), "infra.toml")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")
	sb := sandboxtest.New(t, in)
	if err := sandbox.Do(sb.Host, func() error {
		p, err := plan.Host(in)
		if err != nil {
			return err
		}
		return p.Apply(io.Discard)
	}); err != nil {
		t.Fatal(err)
	}
	if err := sb.AddStandIns(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	var log strings.Builder
	logf := func(format string, args ...any) {
		logMu.Lock()
		defer logMu.Unlock()
		fmt.Fprintf(&log, format+"\n", args...)
	}
	var r *Resolver
	if err := sandbox.Do(sb.Host, func() error {
		var err error
		if r, err = New(logf); err != nil {
			return err
		}
		vms, err := firewall.ReadEgress(in.Host)
		if err != nil {
			return err
		}
		return r.Set(vms)
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		logMu.Lock()
		t.Logf("the resolver's log:\n%s", log.String())
		logMu.Unlock()
	}()

	webNS, dbNS := sb.VMs["web"], sb.VMs["db"]
	port := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, sandbox.Port) }
	listed4, listed6, unlisted4 := sandbox.NameAddrs[0], sandbox.NameAddrs[1], sandbox.NameAddrs[2]
	for _, ipv6 := range []bool{false, true} {
		gw, listed := web.Gateway, listed4
		if ipv6 {
			gw, listed = web.Gateway6, listed6
		}
		if r := sandbox.TCP(webNS, port(listed)); r.Reached {
			t.Fatalf("web reaches %s before it asked for a name: the probes below would prove nothing", listed)
		}
		got, err := sandbox.Resolve(webNS, gw, sandbox.ListedName, ipv6)
		if err != nil || len(got) != 1 || got[0] != listed {
			t.Fatalf("web asking its gateway %s for %s: %v, %v; want %s", gw, sandbox.ListedName, got, err, listed)
		}
		if r := sandbox.TCP(webNS, port(listed)); !r.Reached {
			t.Errorf("web does not reach %s (%s) once its gateway answered: %v", sandbox.ListedName, listed, r.Err)
		}
		if _, err := sandbox.Resolve(webNS, gw, sandbox.UnlistedName, ipv6); err == nil || !strings.Contains(err.Error(), "NXDOMAIN") {
			t.Errorf("web asking for %s: %v; want NXDOMAIN", sandbox.UnlistedName, err)
		}
	}
	for _, c := range []struct {
		what string
		ns   string
		to   netip.AddrPort
	}{
		{"the unlisted name's address", webNS, port(unlisted4)},
		{"the internet server, by address", webNS, port(sandbox.InternetAddr)},
		{"the internet server, by IPv6 address", webNS, port(sandbox.InternetAddr6)},
		{"its DNS server directly", webNS, netip.AddrPortFrom(sandbox.DNSAddr, 53)},
		{"web's resolver, from db", dbNS, netip.AddrPortFrom(web.Gateway, 53)},
	} {
		if r := sandbox.TCP(c.ns, c.to); r.Reached {
			t.Errorf("%s (%s) reached", c.what, c.to)
		}
	}
	if _, err := sandbox.Resolve(webNS, sandbox.DNSAddr, sandbox.ListedName, false); err == nil {
		t.Error("web resolved through its DNS server directly")
	}
	// The host itself is not web: its questions are refused.
	if _, err := sandbox.Resolve(sb.Host, web.Gateway, sandbox.ListedName, false); err == nil || !strings.Contains(err.Error(), "REFUSED") {
		t.Errorf("the host asking web's resolver: %v; want REFUSED", err)
	}
	out, _ := sandbox.Command(sb.Host, "nft", "list", "set", "inet", "microvm", firewall.EgressSet).Output()
	for _, want := range []string{fmt.Sprintf(`"br-web" . %s timeout 1m expires `, listed4), fmt.Sprintf(`comment "%s"`, sandbox.ListedName)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("set %s lacks %s:\n%s", firewall.EgressSet, want, out)
		}
	}

	t.Run("refill after a load", func(t *testing.T) {
		rs := firewall.Ruleset(in)
		if err := sandbox.Do(sb.Host, func() error { return (&firewall.Replace{Ruleset: rs, Why: "update"}).Apply() }); err != nil {
			t.Fatal(err)
		}
		if r := sandbox.TCP(webNS, port(listed4)); r.Reached {
			t.Fatal("a load of the table kept the egress addresses: the refill below would prove nothing")
		}
		if err := sandbox.Do(sb.Host, r.Refill); err != nil {
			t.Fatal(err)
		}
		if r := sandbox.TCP(webNS, port(listed4)); !r.Reached {
			t.Errorf("after the refill, web does not reach %s: %v", listed4, r.Err)
		}
	})

	t.Run("the TTL ends", func(t *testing.T) {
		defer func(min, max time.Duration) { MinTTL, MaxTTL = min, max }(MinTTL, MaxTTL)
		MinTTL, MaxTTL = time.Second, 2*time.Second
		if _, err := sandbox.Resolve(webNS, web.Gateway6, sandbox.ListedName, true); err != nil {
			t.Fatal(err)
		}
		if r := sandbox.TCP(webNS, port(listed6)); !r.Reached {
			t.Fatalf("web does not reach %s: %v", listed6, r.Err)
		}
		time.Sleep(3 * time.Second)
		if r := sandbox.TCP(webNS, port(listed6)); r.Reached {
			t.Errorf("web still reaches %s after its TTL", listed6)
		}
	})

	t.Run("fails closed", func(t *testing.T) {
		r.Close()
		if got, err := sandbox.Resolve(webNS, web.Gateway, sandbox.ListedName, false); err == nil {
			t.Errorf("without the resolver, web resolves %s: %v", sandbox.ListedName, got)
		}
	})
	logMu.Lock()
	if !strings.Contains(log.String(), "egress: web asked for www.example.net (A), which its egress list does not name: NXDOMAIN") {
		t.Errorf("the refusal is not logged:\n%s", log.String())
	}
	logMu.Unlock()
}
