// Package fleet keeps many hosts under one infra.toml held in etcd: the
// desired file and where each VM runs are written by the admin (fleet push,
// move); each host applies its own part with the single-host code and
// writes back what it observes. etcd's transactions, leases and watches do
// the coordination; this package only names the keys and reads and writes
// them.
package fleet

import "strings"

// Prefix is where everything of the fleet lives in etcd.
const Prefix = "/microvm/"

// The keys, one place for their layout (docs/fleet.md, "Who owns what").
const (
	DesiredKey  = Prefix + "desired" // the fleet's infra.toml
	MovePrefix  = Prefix + "moves/"  // + VM: a move under way (JSON)
	HostsPrefix = Prefix + "hosts/"  // + HOST/: what that host writes

	// PlacementKey says where every VM runs, as one JSON object (VM ->
	// host): a push that places hundreds of VMs writes one key, within
	// etcd's limit of operations in a transaction (--max-txn-ops, 128).
	PlacementKey = Prefix + "placement"
)

// MoveKey records a move of vm under way.
func MoveKey(vm string) string { return MovePrefix + vm }

// HostPrefix is all that host may write.
func HostPrefix(host string) string { return HostsPrefix + host + "/" }

// AliveKey is bound to host's lease: it exists while the host is alive.
func AliveKey(host string) string { return HostPrefix(host) + "alive" }

// StatusKey is host's observed state (JSON), kept after its lease ends.
func StatusKey(host string) string { return HostPrefix(host) + "status" }

// HostOf returns the host name of a key under HostsPrefix, or "".
func HostOf(key string) string {
	rest, ok := strings.CutPrefix(key, HostsPrefix)
	if !ok {
		return ""
	}
	host, _, _ := strings.Cut(rest, "/")
	return host
}
