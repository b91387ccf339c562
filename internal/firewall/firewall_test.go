package firewall

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// infra returns a model with n VMs on 10.N.0.0/24 (then 172.16.N.0/24).
func infra(t testing.TB, n int) *config.Infra {
	t.Helper()
	var b strings.Builder
	b.WriteString("[host]\nuplink = \"eth0\"\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = \"10.%d.%d.0/24\"\n", i, i/256, i%256)
	}
	in, err := config.Parse("test.toml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// uplinkNets stands for the networks of a host's uplink in the tests that
// render without a host: a LAN that is not inside a private range.
var uplinkNets = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("192.168.1.0/24")}

func render(in *config.Infra) string { return Render(in, uplinkNets) }

func TestRulesetGolden(t *testing.T) {
	for _, tt := range []struct{ file, golden string }{
		{"../../examples/infra.toml", "example.nft"},
		{"testdata/allow.toml", "allow.nft"},
		{"testdata/openings.toml", "openings.nft"},
		{"testdata/dualstack.toml", "dualstack.nft"},
		{"testdata/ipv4only.toml", "ipv4only.nft"},
	} {
		in, err := config.Load(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		got := render(in)
		path := filepath.Join("testdata", tt.golden)
		if testenv.Update() {
			os.WriteFile(path, []byte(got), 0o644)
		}
		want, _ := os.ReadFile(path)
		if got != string(want) {
			t.Errorf("ruleset differs from %s (run go test -update after checking):\n%s", path, got)
		}
	}
}

// TestNotInternet: the uplink's networks join the blocked ranges, merged
// so that none lies inside another (nftables refuses overlapping
// intervals), and a host whose uplink cannot be read blocks everything.
func TestNotInternet(t *testing.T) {
	in := infra(t, 1)
	rs := Render(in, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("203.0.113.0/25")})
	want := "elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 168.63.129.16/32, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.0.2.0/24, 192.168.0.0/16, 198.18.0.0/15, 203.0.113.0/25, 224.0.0.0/3 }"
	if !strings.Contains(rs, want) {
		t.Errorf("not_internet: want %s in\n%s", want, rs)
	}
	closed := Render(in, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")})
	if !strings.Contains(closed, "elements = { 0.0.0.0/0 }") || !strings.Contains(closed, "elements = { ::/0 }") {
		t.Errorf("fail-closed table:\n%s", closed)
	}
	// The uplink's IPv6 networks join IPv6's blocked ranges, and only
	// those: 2001:db8::/32 is the sandbox's internet.
	rs6 := Render(in, []netip.Prefix{netip.MustParsePrefix("2001:db8:2::/64"), netip.MustParsePrefix("192.0.2.0/24")})
	want6 := "elements = { ::/96, ::ffff:0.0.0.0/96, 64:ff9b::/96, 64:ff9b:1::/48, 100::/64, 2001::/23, 2001:db8:2::/64, 2002::/16, 5f00::/16, fc00::/7, fe80::/10, fec0::/10, ff00::/8 }"
	if !strings.Contains(rs6, want6) {
		t.Errorf("not_internet6: want %s in\n%s", want6, rs6)
	}
}

// TestConstantRules: isolation is expressed with sets, so the rule count
// does not grow with the number of VMs (the design's iptables need N×(N−1)).
func TestConstantRules(t *testing.T) {
	// Per VM: bridge, source, gateway, subnet, and DNS over UDP and TCP;
	// the IPv6 twins of source (and the link-local one), gateway and
	// subnet; its two drop counters.
	const perVM = 6 + 4 + 2
	want := summarize(render(infra(t, 4))).Rules
	blocked := summarize(render(infra(t, 4))).Elements - perVM*4 // the not_internet sets
	for _, n := range []int{1, 16, 64, 250} {
		s := summarize(render(infra(t, n)))
		if s.Rules != want {
			t.Errorf("N=%d: got %d rules, want %d", n, s.Rules, want)
		}
		if got, want := s.Elements, perVM*n+blocked; got != want {
			t.Errorf("N=%d: got %d set elements, want %d", n, got, want)
		}
	}
}

func TestHashChangesWithModel(t *testing.T) {
	a, b := summarize(render(infra(t, 4))), summarize(render(infra(t, 5)))
	if a.Hash == "" || a.Hash == b.Hash {
		t.Errorf("hashes %q and %q: want distinct and non-empty", a.Hash, b.Hash)
	}
}

// TestLoadAndDiff loads the table into a fresh namespace with the real nft
// and checks what Diff sees: create, nothing, update (in place: one VM
// more), and repair after a hand edit. Tables the program does not own
// are left alone.
func TestLoadAndDiff(t *testing.T) {
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	four, five := infra(t, 4), infra(t, 5)
	err := sandbox.Do(ns, func() error {
		// Someone else's table must survive every apply.
		if err := nft("table ip other {\nchain fw {\ntype filter hook forward priority 0; policy accept;\ncounter\n}\n}\n", "-f", "-"); err != nil {
			return err
		}
		steps := []struct {
			in   *config.Infra
			edit func() string // an nft command to run before Diff
			want string        // "" for no action
		}{
			{four, nil, "create"},
			{four, nil, ""},
			{five, nil, "update in place"},
			{five, nil, ""},
			// The table's comment names the four VMs' ruleset, loaded
			// whole before the update; the record says five.
			{five, func() string {
				return "delete rule inet microvm forward handle " + handle(t, "forward", "isolation")
			}, "repair (edited by hand)"},
			{five, nil, ""},
			{five, func() string { return `delete element inet microvm vm_bridges { "br-vm2" }` }, "repair (edited by hand)"},
			{five, nil, ""},
		}
		for i, st := range steps {
			if st.edit != nil {
				if err := nft(st.edit(), "-f", "-"); err != nil {
					return err
				}
			}
			d, err := Diff(st.in)
			if err != nil {
				return err
			}
			acts := d.Setup
			got := ""
			if len(acts) > 0 {
				switch a := acts[0].(type) {
				case *Replace:
					got = a.Why
				case *Update:
					got = "update in place"
				}
				if err := acts[0].Apply(); err != nil {
					return fmt.Errorf("step %d: %w", i, err)
				}
			}
			if got != st.want {
				t.Errorf("step %d: got action %q, want %q", i, got, st.want)
			}
		}
		out, err := exec.Command("nft", "list", "table", "ip", "other").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "counter") {
			t.Errorf("the other table was changed: %s %v", out, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// handle finds the handle of the rule in chain whose comment has word, in
// the namespace of the calling thread.
func handle(t *testing.T, chain, word string) string {
	out, err := exec.Command("nft", "-a", "list", "chain", Family, Table, chain).Output()
	if err != nil {
		t.Fatalf("nft list chain: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, word) {
			if _, h, ok := strings.Cut(line, "# handle "); ok {
				return strings.TrimSpace(h)
			}
		}
	}
	t.Fatalf("no rule with %q in chain %s:\n%s", word, chain, out)
	return ""
}

func TestConflicts(t *testing.T) {
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	sandbox.Do(ns, func() error {
		if got := Conflicts(); len(got) != 0 {
			t.Errorf("empty namespace: got conflicts %q", got)
		}
		if err := nft("table ip filter {\nchain FORWARD {\ntype filter hook forward priority 0; policy drop;\n}\n}\n", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		got := Conflicts()
		if len(got) != 1 || !strings.Contains(got[0], "ip filter FORWARD has policy drop") || !strings.Contains(got[0], "DOCKER-USER") {
			t.Errorf("got conflicts %q, want one naming ip filter FORWARD with the iptables advice", got)
		}
		return nil
	})
}

// TestAllowVMToTailnet: the setting adds exactly an accept into tailscale0
// and a masquerade out of it; without it, a VM's packet to the tailnet
// meets the final drop. Both tables load into a real nftables.
func TestAllowVMToTailnet(t *testing.T) {
	closed := infra(t, 4)
	open := infra(t, 4)
	open.Host.Tailscale.AllowVMToTailnet = true
	rules := []string{
		`iifname @vm_bridges oifname "tailscale0" ip daddr 100.64.0.0/10 accept`,
		`iifname @vm_bridges oifname "tailscale0" ip6 daddr fd7a:115c:a1e0::/48 accept`,
		`oifname "tailscale0" ip saddr @vm_subnets masquerade`,
		`oifname "tailscale0" ip6 saddr @vm_subnets6 masquerade`,
	}
	tests := []struct {
		name string
		in   *config.Infra
		want bool // the rules are present
		more int  // rules beyond the closed table's
	}{
		{"closed (default)", closed, false, 0},
		{"allow_vm_to_tailnet", open, true, 4},
	}
	base := summarize(render(closed)).Rules
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := render(tt.in)
			for _, r := range rules {
				if got := strings.Contains(rs, r); got != tt.want {
					t.Errorf("has %q: got %v, want %v", r, got, tt.want)
				}
			}
			if got, want := summarize(rs).Rules, base+tt.more; got != want {
				t.Errorf("got %d rules, want %d", got, want)
			}
		})
	}
	if summarize(render(closed)).Hash == summarize(render(open)).Hash {
		t.Error("the setting does not change the table's hash, so apply would not reload it")
	}

	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	err := sandbox.Do(ns, func() error {
		for _, in := range []*config.Infra{open, closed} {
			if err := (&Replace{Ruleset: render(in), Why: "create"}).Apply(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRulesetLoads: the tables of the golden files, allow lists and all,
// load into a real nftables, which parses every rule.
func TestRulesetLoads(t *testing.T) {
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	for _, file := range []string{"../../examples/infra.toml", "testdata/allow.toml", "testdata/openings.toml", "testdata/dualstack.toml", "testdata/ipv4only.toml", "testdata/novms.toml"} {
		in, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := sandbox.Do(ns, func() error { return (&Replace{Ruleset: render(in), Why: "create"}).Apply() }); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}

// TestRuleIdentity: the ruleset says nothing of where infra.toml is or
// where its entries are written: moving lines changes no rule, and a file
// in a directory whose name has a quote, or a long path, renders a table
// that loads (a path in a comment once let a quote inject rules).
func TestRuleIdentity(t *testing.T) {
	testenv.NeedCommands(t, "nft")
	src, err := os.ReadFile("testdata/openings.toml")
	if err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(string(src), "[host]", "# a comment\n\n\n[host]", 1)
	dir := filepath.Join(t.TempDir(), `evil" accept; iifname @vm_bridges accept comment "`, strings.Repeat("long-", 40))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "infra.toml")
	if err := os.WriteFile(file, []byte(moved), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := config.Load("testdata/openings.toml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if ra, rb := render(a), render(b); ra != rb {
		t.Errorf("moving lines and the file changed the ruleset:\n%s\nand\n%s", ra, rb)
	}
	ns := testenv.NetNS(t)
	if err := sandbox.Do(ns, func() error { return (&Replace{Ruleset: render(b), Why: "create"}).Apply() }); err != nil {
		t.Errorf("the table of %s does not load: %v", file, err)
	}
}

// TestIPv6Off: with ipv6 = false the IPv6 sets are empty, so the
// anti-spoofing rule drops every IPv6 packet a VM sends, and nothing is
// NATed; the rules are the same ones (O(1) either way).
func TestIPv6Off(t *testing.T) {
	on := render(infra(t, 2))
	in, err := config.Parse("off.toml", []byte("[host]\nuplink = \"eth0\"\nipv6 = false\n[vm.vm1]\nsubnet = \"10.0.1.0/24\"\n[vm.vm2]\nsubnet = \"10.0.2.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	off := render(in)
	for _, set := range []string{"vm_sources6", "vm_gateways6", "vm_subnets6"} {
		body := off[strings.Index(off, "set "+set+" {"):]
		body = body[:strings.Index(body, "}")]
		if strings.Contains(body, "elements") {
			t.Errorf("with ipv6 = false, %s has elements:\n%s", set, body)
		}
	}
	if strings.Contains(off, "NAT66") || !strings.Contains(on, "NAT66") {
		t.Error("NAT66 is not what the setting says")
	}
	if !strings.Contains(off, "(IPv6 is off: none)") {
		t.Error("the anti-spoofing rule does not say IPv6 is off")
	}
	if a, b := summarize(on).Rules, summarize(off).Rules; a != b+1 { // the masquerade
		t.Errorf("%d rules with IPv6, %d without; want one more (NAT66)", a, b)
	}
}
