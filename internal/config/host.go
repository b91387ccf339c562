package config

import "path/filepath"

// Paths of the host part's keeper, `microvm host` (microvm-host.service
// under systemd, detached elsewhere), and of the firewall it keeps:
//
//	RUN_DIR/host.log                what it printed, when detached (under systemd: the journal)
//	RUN_DIR/host.json               its state for `status --host`: its pid, since when, its last repair
//	RUN_DIR/firewall.lock           held while the table is loaded or compared
//	RUN_DIR/firewall-net-INODE.nft  the ruleset last loaded in network namespace INODE
//	RUN_DIR/egress-net-INODE.json   the VMs with an egress list that ruleset serves, for the resolver
//
// They are files, so no VM name can collide with them.

// HostLog is the output of the detached `microvm host`.
func (h Host) HostLog() string { return filepath.Join(h.RunDir, "host.log") }

// HostState is where `microvm host` says how it is, for status.
func (h Host) HostState() string { return filepath.Join(h.RunDir, "host.json") }

// FleetState is where a fleet host's daemon says how it stands with etcd,
// for fleet status on the host when etcd does not answer.
func (h Host) FleetState() string { return filepath.Join(h.RunDir, "fleet.json") }

// FirewallLock is held while the program loads its table, and while the
// watcher compares it, so that the watcher never takes apply's change for
// an edit.
func (h Host) FirewallLock() string { return filepath.Join(h.RunDir, "firewall.lock") }

// FirewallRecord holds the ruleset the program last loaded in the network
// namespace netns (its inode number): the table the watcher keeps.
func (h Host) FirewallRecord(netns string) string {
	return filepath.Join(h.RunDir, "firewall-net-"+netns+".nft")
}

// FirewallGeneration says which nftables generation of the network
// namespace netns holds exactly the ruleset in FirewallRecord, as the
// program loaded it: what lets a plan trust the table without reading it.
func (h Host) FirewallGeneration(netns string) string {
	return filepath.Join(h.RunDir, "firewall-net-"+netns+".gen")
}

// EgressRecord holds the VMs with an egress list that the ruleset last
// loaded in the network namespace netns serves: what the resolver of
// `microvm host` answers for.
func (h Host) EgressRecord(netns string) string {
	return filepath.Join(h.RunDir, "egress-net-"+netns+".json")
}

// DemoFile is where `microvm demo` writes the model its supervisors read:
// the example, moved to the demo's directories, with what this machine runs.
func (h Host) DemoFile() string { return filepath.Join(h.RunDir, "infra.toml") }
