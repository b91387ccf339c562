package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// An egress list turns a VM's internet from everything public into the
// names it lists, in [host] for every VM or in [vm.NAME] for one (added to
// [host]'s):
//
//	egress = ["deb.debian.org", "*.github.com"]
//
// A name is exact ("deb.debian.org"), or "*." and a domain for every name
// under it ("*.github.com" is api.github.com and a.b.github.com, not
// github.com itself). Such a VM asks its gateway for names: a resolver of
// the host (`microvm host`) answers there, forwards the listed names to
// the VM's dns and lets the VM reach the addresses of the answers (A and
// AAAA) for as long as their TTL says; it answers every other name with
// NXDOMAIN. The VM reaches nothing else on the internet, not even another
// DNS server. What allow opens, and openings to other VMs, stay open.

// Egress is one name of an egress list.
type Egress struct {
	Name string // lowercase, without a final dot; a wildcard starts with "*."
	At   string // file:line:col of the entry
}

// Matches reports whether the DNS name qname (any case, with or without
// the final dot) is the name, or under it for a wildcard.
func (e Egress) Matches(qname string) bool {
	q := strings.TrimSuffix(strings.ToLower(qname), ".")
	if domain, ok := strings.CutPrefix(e.Name, "*."); ok {
		return strings.HasSuffix(q, "."+domain)
	}
	return q == e.Name
}

// EgressNames are the names of list, in order.
func EgressNames(list []Egress) []string {
	out := make([]string, len(list))
	for i, e := range list {
		out[i] = e.Name
	}
	return out
}

// HasEgress reports whether the VM reaches only the names of its egress list.
func (vm *VM) HasEgress() bool { return len(vm.Egress) > 0 }

// Nameserver is the resolver the guest asks: its gateway when it has an
// egress list (the only DNS server it reaches), else its dns.
func (vm *VM) Nameserver() string {
	if vm.HasEgress() {
		return vm.Gateway.String()
	}
	return vm.DNS
}

const egressExample = `e.g. egress = ["deb.debian.org", "*.github.com"]`

// egressList reads the egress list v (nil when not written) of key.
func (p *parser) egressList(v *value, key string) []Egress {
	if v == nil {
		return nil
	}
	if v.kind != unstable.Array {
		p.errorf(v.pos, "%s must be a list of DNS names, %s", key, egressExample)
		return nil
	}
	var out []Egress
	for i, s := range v.list {
		name, msg := parseEgress(s)
		if msg != "" {
			p.errorf(v.at[i], "%s: %q %s; write a name such as \"deb.debian.org\", or \"*.\" and a domain for every name under it, %s", key, s, msg, egressExample)
			continue
		}
		out = append(out, Egress{Name: name, At: fmt.Sprintf("%s:%d:%d", p.file, v.at[i].Line, v.at[i].Col)})
	}
	return out
}

// parseEgress normalizes one name, or says what is wrong with it.
func parseEgress(s string) (string, string) {
	if _, err := netip.ParseAddr(s); err == nil {
		return "", "is an address; egress lists names (an address goes in allow)"
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return "", "is a network; egress lists names (a network goes in allow)"
	}
	name := strings.TrimSuffix(strings.ToLower(s), ".")
	domain, wild := strings.CutPrefix(name, "*.")
	if len(name) == 0 || len(name) > 253 {
		return "", "is not a DNS name"
	}
	labels := strings.Split(domain, ".")
	if len(labels) < 2 {
		return "", "has a single label; write the whole name, with its domain"
	}
	for _, l := range labels {
		if l == "*" {
			return "", "has * inside; a wildcard is \"*.\" at the start only"
		}
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", "is not a DNS name (each label has 1 to 63 letters, digits or '-', not at its ends)"
		}
		if c, ok := badRune(l, "-_"); ok {
			return "", fmt.Sprintf("contains %q, which DNS names do not", c)
		}
	}
	if wild {
		return "*." + domain, ""
	}
	return name, ""
}
