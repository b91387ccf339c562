package config

import (
	"net/netip"
	"strings"
	"testing"
)

// TestIPv6: every VM has a /64 next to its IPv4 subnet, numbered by the
// subnet's second and third octets, from a stable ULA by default or from
// ipv6_prefix; ipv6 = false leaves them out.
func TestIPv6(t *testing.T) {
	const vms = "[vm.a]\nsubnet = \"10.1.0.0/24\"\n[vm.b]\nsubnet = \"10.12.3.0/24\"\n"
	tests := []struct {
		name, host          string
		nat66, ipv6         bool
		subnetA, gwA, addrA string
		subnetB             string
	}{
		{"default ULA", `uplink = "eth0"`, true, true, "fddc:b7cf:609b:100::/64", "fddc:b7cf:609b:100::1", "fddc:b7cf:609b:100::2", "fddc:b7cf:609b:c03::/64"},
		{"another state_dir, another ULA", "uplink = \"eth0\"\nstate_dir = \"/srv/vms\"", true, true, "fd33:b9e3:7a8:100::/64", "fd33:b9e3:7a8:100::1", "fd33:b9e3:7a8:100::2", "fd33:b9e3:7a8:c03::/64"},
		{"routed prefix", "uplink = \"eth0\"\nipv6_prefix = \"2001:db8:7::/48\"", false, true, "2001:db8:7:100::/64", "2001:db8:7:100::1", "2001:db8:7:100::2", "2001:db8:7:c03::/64"},
		{"larger routed prefix", "uplink = \"eth0\"\nipv6_prefix = \"2001:db8:700::/40\"", false, true, "2001:db8:700:100::/64", "2001:db8:700:100::1", "2001:db8:700:100::2", "2001:db8:700:c03::/64"},
		{"a ULA of one's own", "uplink = \"eth0\"\nipv6_prefix = \"fd12:3456:789a::/48\"", true, true, "fd12:3456:789a:100::/64", "fd12:3456:789a:100::1", "fd12:3456:789a:100::2", "fd12:3456:789a:c03::/64"},
		{"off", "uplink = \"eth0\"\nipv6 = false", false, false, "invalid Prefix", "invalid IP", "invalid IP", "invalid Prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := Parse("x.toml", []byte("[host]\n"+tt.host+"\n"+vms))
			if err != nil {
				t.Fatal(err)
			}
			a, _ := in.VM("a")
			b, _ := in.VM("b")
			for _, c := range []struct{ what, got, want string }{
				{"a's subnet", a.Subnet6.String(), tt.subnetA},
				{"a's gateway", a.Gateway6.String(), tt.gwA},
				{"a's address", a.Addr6.String(), tt.addrA},
				{"b's subnet", b.Subnet6.String(), tt.subnetB},
			} {
				if c.got != c.want {
					t.Errorf("%s = %s, want %s", c.what, c.got, c.want)
				}
			}
			if in.Host.NAT66 != tt.nat66 || in.Host.IPv6 != tt.ipv6 || a.HasIPv6() != tt.ipv6 {
				t.Errorf("NAT66 = %v, IPv6 = %v, HasIPv6 = %v; want %v, %v, %v", in.Host.NAT66, in.Host.IPv6, a.HasIPv6(), tt.nat66, tt.ipv6, tt.ipv6)
			}
			if got := len(a.Subnets()); (got == 2) != tt.ipv6 {
				t.Errorf("a has %d subnets", got)
			}
		})
	}
}

// TestLinkLocal: the link-local address is the one Linux gives a link with
// the VM's MAC (modified EUI-64), which the guest keeps.
func TestLinkLocal(t *testing.T) {
	mac := []byte{0x02, 0xe0, 0x56, 0x67, 0x79, 0x7f}
	if got, want := linkLocal(mac), netip.MustParseAddr("fe80::e0:56ff:fe67:797f"); got != want {
		t.Errorf("linkLocal(%x) = %s, want %s", mac, got, want)
	}
}

// TestULAStable: the derived prefix depends on the file's uplink and
// state_dir only, not on the VMs or the order of keys, and is a ULA.
func TestULAStable(t *testing.T) {
	one, err := Parse("1", []byte("[host]\nuplink=\"eth0\"\n[vm.web]\nsubnet=\"10.1.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	two, err := Parse("2", []byte("[vm.db]\nsubnet=\"10.2.0.0/24\"\n[host]\nuplink=\"eth0\"\nallow=[\"192.0.2.9\"]\n[vm.web]\nsubnet=\"10.1.0.0/24\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if one.Host.IPv6Prefix != two.Host.IPv6Prefix || !strings.HasPrefix(one.Host.IPv6Prefix.String(), "fd") || one.Host.IPv6Prefix.Bits() != 48 {
		t.Errorf("prefixes %s and %s: want one /48 in fd00::/8", one.Host.IPv6Prefix, two.Host.IPv6Prefix)
	}
}

// TestOpensBothFamilies: a vm:NAME entry carries the other VM's IPv4 and
// IPv6 addresses; IPv6 entries of allow and publish are read.
func TestOpensBothFamilies(t *testing.T) {
	in, err := Parse("x.toml", []byte(`[host]
uplink = "eth0"
allow = ["2001:db8:1::/48 tcp 443", "2001:db8::53 udp 53"]
[vm.web]
subnet = "10.1.0.0/24"
allow = ["vm:db tcp 5432", "2001:db8:9::1"]
publish = ["tcp 80 from 198.51.100.0/24,2001:db8:5::/48"]
[vm.db]
subnet = "10.2.0.0/24"
`))
	if err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")
	db, _ := in.VM("db")
	var got []string
	for _, a := range append(in.Host.Allow, web.Allow...) {
		got = append(got, a.String())
	}
	if want := "2001:db8:1::/48 tcp 443|2001:db8::53 udp 53|vm:db tcp 5432|2001:db8:9::1"; strings.Join(got, "|") != want {
		t.Errorf("allow entries %q, want %q", strings.Join(got, "|"), want)
	}
	if o := web.Allow[0]; o.Net.Addr() != db.Addr || o.Net6.Addr() != db.Addr6 || o.Net6.Bits() != 128 {
		t.Errorf("vm:db opens %s and %s; want %s and %s/128", o.Net, o.Net6, db.Addr, db.Addr6)
	}
	if got, want := web.Publish[0].String(), "tcp 80 from 198.51.100.0/24,2001:db8:5::/48"; got != want {
		t.Errorf("publish %q, want %q", got, want)
	}
}

// TestEgress reads egress lists, [host]'s added to each VM's, and matches
// names as DNS does: any case, a final dot or not, a wildcard for the
// names under its domain only.
func TestEgress(t *testing.T) {
	in, err := Parse("x.toml", []byte(`[host]
uplink = "eth0"
egress = ["Deb.Debian.org."]
[vm.web]
subnet = "10.1.0.0/24"
egress = ["*.github.com"]
[vm.db]
subnet = "10.2.0.0/24"
`))
	if err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")
	db, _ := in.VM("db")
	if got, want := strings.Join(EgressNames(web.Egress), ","), "deb.debian.org,*.github.com"; got != want {
		t.Errorf("web's egress %q, want %q", got, want)
	}
	if got, want := strings.Join(EgressNames(db.Egress), ","), "deb.debian.org"; got != want {
		t.Errorf("db's egress %q, want %q", got, want)
	}
	if got, want := web.Egress[1].At, "x.toml:6:11"; got != want {
		t.Errorf("at %s, want %s", got, want)
	}
	if web.Nameserver() != "10.1.0.1" {
		t.Errorf("web's nameserver %s, want its gateway", web.Nameserver())
	}
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"deb.debian.org", true}, {"DEB.debian.ORG.", true}, {"debian.org", false}, {"x.deb.debian.org", false},
		{"api.github.com", true}, {"a.b.github.com.", true}, {"github.com", false}, {"evilgithub.com", false}, {"github.com.evil.net", false},
	} {
		got := false
		for _, e := range web.Egress {
			got = got || e.Matches(tt.name)
		}
		if got != tt.want {
			t.Errorf("%s matches: %v, want %v", tt.name, got, tt.want)
		}
	}
	plain, _ := Parse("y.toml", []byte("[host]\nuplink = \"eth0\"\n[vm.a]\nsubnet = \"10.1.0.0/24\"\ndns = \"2606:4700:4700::1111\"\n"))
	if a, _ := plain.VM("a"); a.HasEgress() || a.Nameserver() != "2606:4700:4700::1111" {
		t.Errorf("a VM without egress: HasEgress %v, nameserver %s", a.HasEgress(), a.Nameserver())
	}
}
