package firewall

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// The resolver of the VMs with an egress list (package egress, in
// `microvm host`) serves what the loaded table lets through: every load
// of the table records, beside the ruleset, the VMs it serves (their
// bridges, addresses, gateways, upstream DNS servers and names), in
// RUN_DIR/egress-net-INODE.json. The watcher tells `microvm host` when the
// table was loaded anew (Watcher.Loaded), which then reads the record.

// EgressVM is what the resolver serves for one VM with an egress list.
type EgressVM struct {
	Name     string       `json:"name"`
	Bridge   string       `json:"bridge"`
	Addrs    []netip.Addr `json:"addrs"`    // the VM's own: the resolver answers only them
	Gateways []netip.Addr `json:"gateways"` // where it listens, on port 53
	Upstream netip.Addr   `json:"upstream"` // the VM's dns, which it asks
	Names    []string     `json:"names"`    // the egress list, as config.Egress has it
}

// EgressOf lists the VMs of in with an egress list.
func EgressOf(in *config.Infra) []EgressVM {
	var out []EgressVM
	for _, vm := range egressOf(in.VMs) {
		e := EgressVM{Name: vm.Name, Bridge: vm.Bridge, Addrs: []netip.Addr{vm.Addr}, Gateways: []netip.Addr{vm.Gateway}, Names: config.EgressNames(vm.Egress)}
		if vm.HasIPv6() {
			e.Addrs = append(e.Addrs, vm.Addr6)
			e.Gateways = append(e.Gateways, vm.Gateway6)
		}
		// Parse validated dns: it is an address.
		e.Upstream, _ = netip.ParseAddr(vm.DNS)
		out = append(out, e)
	}
	return out
}

// egressRecordPath is the file holding the egress record of the network
// namespace of the calling thread.
func egressRecordPath(h config.Host) (string, error) {
	ns, err := netnsID()
	if err != nil {
		return "", err
	}
	return h.EgressRecord(ns), nil
}

func writeEgressRecord(h config.Host, vms []EgressVM) error {
	p, err := egressRecordPath(h)
	if err != nil {
		return err
	}
	if vms == nil {
		vms = []EgressVM{}
	}
	b, err := json.MarshalIndent(vms, "", "  ")
	if err != nil {
		return fmt.Errorf("recording the egress lists: %w", err) // plain values: never
	}
	if err := safedir.WritePrivate(p, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("recording the egress lists: %w", err)
	}
	return nil
}

// ReadEgress reads the VMs with an egress list that the table last loaded
// in this network namespace serves; none when nothing was loaded.
func ReadEgress(h config.Host) ([]EgressVM, error) {
	p, err := egressRecordPath(h)
	if err != nil {
		return nil, err
	}
	b, err := safedir.ReadPrivate(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the egress lists: %w", err)
	}
	var vms []EgressVM
	if err := json.Unmarshal(b, &vms); err != nil {
		return nil, fmt.Errorf("reading the egress lists in %s: %w", p, err)
	}
	return vms, nil
}

// EgressAddr is an address a VM may reach now, for a name of its egress
// list, as the sets have it.
type EgressAddr struct {
	Addr    netip.Addr    `json:"addr"`
	Name    string        `json:"name"`    // the name it answered
	Expires time.Duration `json:"expires"` // how long it stays
}

// EgressAddrs reads the addresses each VM may reach now, by bridge, from
// the loaded table's sets: what status and info show.
func EgressAddrs() (map[string][]EgressAddr, error) {
	out := map[string][]EgressAddr{}
	for _, set := range dynamicSets {
		js, err := exec.Command("nft", "-j", "list", "set", Family, Table, set).Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok && bytes.Contains(ee.Stderr, []byte("No such file")) {
				return out, nil // no table (or an old one): nothing allowed
			}
			return nil, fmt.Errorf("reading set %s: %w", set, cmdErr(err))
		}
		var doc struct {
			Nftables []struct {
				Set *struct {
					Elem []struct {
						Elem struct {
							Val struct {
								Concat []string `json:"concat"`
							} `json:"val"`
							Expires int    `json:"expires"`
							Comment string `json:"comment"`
						} `json:"elem"`
					} `json:"elem"`
				} `json:"set"`
			} `json:"nftables"`
		}
		if err := json.Unmarshal(js, &doc); err != nil {
			return nil, fmt.Errorf("reading set %s: %w", set, err)
		}
		for _, o := range doc.Nftables {
			if o.Set == nil {
				continue
			}
			for _, e := range o.Set.Elem {
				v := e.Elem.Val.Concat
				if len(v) != 2 {
					continue
				}
				a, err := netip.ParseAddr(v[1])
				if err != nil {
					continue
				}
				out[v[0]] = append(out[v[0]], EgressAddr{a, e.Elem.Comment, time.Duration(e.Elem.Expires) * time.Second})
			}
		}
	}
	return out, nil
}
