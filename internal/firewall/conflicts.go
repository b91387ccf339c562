package firewall

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
)

// Conflicts names other firewalls on the host that would drop VM traffic.
// nftables runs every base chain on a hook: a packet this table accepts is
// still dropped by another table's forward chain whose policy is drop (as
// Docker sets it through iptables). The program never changes another
// table, so it only says so.
func Conflicts() []string {
	var out []string
	if js, err := exec.Command("nft", "-j", "list", "chains").Output(); err == nil {
		var doc struct {
			Nftables []struct {
				Chain *struct {
					Family, Table, Name, Hook, Policy string
				}
			}
		}
		// Conflicts are hints: JSON this nft writes otherwise gives none,
		// as a missing nft does.
		_ = json.Unmarshal(js, &doc)
		for _, o := range doc.Nftables {
			c := o.Chain
			if c == nil || c.Table == Table && c.Family == Family || c.Hook != "forward" || c.Policy != "drop" {
				continue
			}
			out = append(out, conflict(fmt.Sprintf("nftables chain %s %s %s", c.Family, c.Table, c.Name), c.Table == "filter" && c.Name == "FORWARD"))
		}
	}
	// iptables-legacy rules live outside nftables and are invisible above.
	if rules, err := exec.Command("iptables-legacy", "-S", "FORWARD").Output(); err == nil &&
		strings.Contains(string(rules), "-P FORWARD DROP") {
		out = append(out, conflict("iptables-legacy chain FORWARD", true))
	}
	return out
}

func conflict(where string, iptables bool) string {
	msg := where + " has policy drop: it will drop VM traffic this program allows"
	if iptables {
		return msg + "; allow the VM bridges there, e.g. `iptables -I FORWARD -i br-+ -j ACCEPT` and `iptables -I FORWARD -o br-+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` (with Docker, insert them into DOCKER-USER)"
	}
	return msg + "; add accept rules for the VM bridges to that chain"
}
