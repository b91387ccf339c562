package firewall

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Conflicts names other firewalls on the host that would drop VM traffic.
// nftables runs every base chain on a hook: a packet this table accepts is
// still dropped by another table's forward chain whose policy is drop (as
// Docker sets it through iptables). The program never changes another
// table, so it only says so.
func Conflicts() []string {
	var out []string
	// Conflicts are hints: chains that cannot be listed give none, as a
	// host without nftables does.
	chains, _ := baseChains()
	for _, c := range chains {
		if c.table == Table && c.family == Family || c.hook != "forward" || c.policy != "drop" {
			continue
		}
		out = append(out, conflict(fmt.Sprintf("nftables chain %s %s %s", c.family, c.table, c.name), c.table == "filter" && c.name == "FORWARD"))
	}
	// iptables-legacy rules live outside nftables and are invisible above.
	// They have a filter table in this network namespace only if the
	// kernel lists one (no need to run iptables-legacy otherwise).
	if names, err := os.ReadFile("/proc/net/ip_tables_names"); err == nil && strings.Contains("\n"+string(names), "\nfilter\n") {
		if rules, err := exec.Command("iptables-legacy", "-S", "FORWARD").Output(); err == nil &&
			strings.Contains(string(rules), "-P FORWARD DROP") {
			out = append(out, conflict("iptables-legacy chain FORWARD", true))
		}
	}
	return out
}

// chain is a base chain of nftables, as nft names its parts.
type chain struct{ family, table, name, hook, policy string }

// families are nftables' address families by number, as nft names them.
var families = map[uint8]string{unix.NFPROTO_INET: "inet", unix.NFPROTO_IPV4: "ip", unix.NFPROTO_ARP: "arp",
	unix.NFPROTO_NETDEV: "netdev", unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_IPV6: "ip6"}

// baseChains lists the chains of every table that sit on a hook, through
// netlink (one dump, where `nft list chains` takes tens of milliseconds).
func baseChains() ([]chain, error) {
	req := nl.NewNetlinkRequest(nfnlSubsysNftables<<8|unix.NFT_MSG_GETCHAIN, unix.NLM_F_DUMP)
	req.AddData(nfgenmsg{})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	const typeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	var out []chain
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[4:])
		if err != nil {
			return nil, fmt.Errorf("listing nftables chains: %w", err)
		}
		c := chain{family: families[m[0]]}
		hooked := false
		for _, a := range attrs {
			switch a.Attr.Type & typeMask {
			case unix.NFTA_CHAIN_TABLE:
				c.table = strings.TrimRight(string(a.Value), "\x00")
			case unix.NFTA_CHAIN_NAME:
				c.name = strings.TrimRight(string(a.Value), "\x00")
			case unix.NFTA_CHAIN_POLICY:
				if len(a.Value) == 4 {
					c.policy = map[uint32]string{0: "drop", 1: "accept"}[binary.BigEndian.Uint32(a.Value)]
				}
			case unix.NFTA_CHAIN_HOOK:
				hook, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					return nil, fmt.Errorf("listing nftables chains: %w", err)
				}
				for _, h := range hook {
					if h.Attr.Type&typeMask == unix.NFTA_HOOK_HOOKNUM && len(h.Value) == 4 {
						hooked = true
						// Hook 2 is forward in every family that has one
						// (NF_INET_FORWARD, NF_BR_FORWARD, NF_ARP_FORWARD);
						// netdev's hooks are ingress and egress.
						if binary.BigEndian.Uint32(h.Value) == 2 && c.family != "netdev" {
							c.hook = "forward"
						}
					}
				}
			}
		}
		if hooked {
			out = append(out, c)
		}
	}
	return out, nil
}

func conflict(where string, iptables bool) string {
	msg := where + " has policy drop: it will drop VM traffic this program allows"
	if iptables {
		return msg + "; allow the VM bridges there, e.g. `iptables -I FORWARD -i br-+ -j ACCEPT` and `iptables -I FORWARD -o br-+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` (with Docker, insert them into DOCKER-USER)"
	}
	return msg + "; add accept rules for the VM bridges to that chain"
}
