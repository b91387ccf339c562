package firewall

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestDrift makes hand edits to the loaded table with the real nft, each
// keeping the number of rules and set elements where it can, and checks
// that Diff sees each one, says what changed, and that its action undoes
// it. Counters and the order of set elements are not changes.
func TestDrift(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	in := infra(t, 4)
	in.Host.RunDir = t.TempDir()
	vm1 := in.VMs[0]
	tests := []struct {
		name string
		edit func() string // nft commands
		want []string      // State.Changes; nil for none
	}{
		{"a drop turned into an accept", func() string {
			return "replace rule inet microvm forward handle " + handle(t, "forward", "isolation") +
				` iifname @vm_bridges oifname @vm_bridges accept comment "isolation: no VM reaches another, but through an opening"`
		}, []string{`chain forward: rule "isolation: no VM reaches another, but through an opening" changed (drop -> accept)`}},
		{"a rule deleted", func() string {
			return "delete rule inet microvm input handle " + handle(t, "input", "nothing else")
		}, []string{`chain input: rule "nothing else from a VM reaches the host (no SSH, no other gateways)" is missing`}},
		{"a rule added in front", func() string { return "insert rule inet microvm forward accept" },
			[]string{`chain forward: extra rule [{"accept":null}]`}},
		{"an element swapped for another", func() string {
			return `delete element inet microvm vm_bridges { "br-vm2" }; add element inet microvm vm_bridges { "eth0" }`
		}, []string{"set vm_bridges lacks br-vm2", "set vm_bridges has an extra eth0"}},
		{"a source swapped for another", func() string {
			return fmt.Sprintf(`delete element inet microvm vm_sources { "br-vm1" . %s . %s }; add element inet microvm vm_sources { "br-vm1" . %s . %s }`,
				vm1.Addr, vm1.MAC, vm1.Addr.Next(), vm1.MAC)
		}, []string{fmt.Sprintf("set vm_sources lacks br-vm1 . %s . %s", vm1.Addr, vm1.MAC), fmt.Sprintf("set vm_sources has an extra br-vm1 . %s . %s", vm1.Addr.Next(), vm1.MAC)}},
		{"a chain's policy", func() string { return "chain inet microvm forward { policy drop; }" },
			[]string{"chain forward is defined differently (policy accept -> drop)"}},
		{"a chain added", func() string { return "add chain inet microvm mine" }, []string{"extra chain mine"}},
		{"the table made dormant, which turns every chain off", func() string { return "add table inet microvm { flags dormant; }" },
			[]string{"table microvm has other flags (dormant turns every chain off)"}},
		{"another table", func() string { return "add table ip other" }, nil},
		{"the same elements again, in another order", func() string {
			return `flush set inet microvm vm_bridges; add element inet microvm vm_bridges { "br-vm4", "br-vm3", "br-vm2", "br-vm1" }`
		}, nil},
	}
	err := sandbox.Do(ns, func() error {
		if err := (&Replace{Ruleset: Ruleset(in), Why: "create", Host: &in.Host}).Apply(); err != nil {
			return err
		}
		for _, tt := range tests {
			if err := nft(tt.edit(), "-f", "-"); err != nil {
				t.Errorf("%s: %v", tt.name, err)
				continue
			}
			d, err := Diff(in)
			if err != nil {
				return err
			}
			acts := d.Setup
			var got []string
			if len(acts) > 0 {
				r := acts[0].(*Replace)
				got = r.Changes
				if r.Why != "repair (edited by hand)" {
					t.Errorf("%s: Why = %q", tt.name, r.Why)
				}
				if !strings.Contains(r.String(), got[0]) {
					t.Errorf("%s: the plan line does not say what changed: %s", tt.name, r)
				}
				if err := r.Apply(); err != nil {
					return err
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
			}
			if d, err := Diff(in); err != nil || !d.Empty() {
				t.Errorf("%s: after the repair, Diff gives %v, %v", tt.name, d.Setup, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCountersAreNoChange: a table whose rules count packets, in anonymous
// counters and in named ones (as the drops per VM are), compares equal
// however many they counted.
func TestCountersAreNoChange(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft", "ping")
	ns := testenv.NetNS(t)
	rs := `table inet microvm {
	counter drop_to_lo {
	}

	map vm_drops_to {
		type ifname : counter
		elements = { "lo" : "drop_to_lo" }
	}

	chain output {
		type filter hook output priority 0; policy accept;
		counter name oifname map @vm_drops_to
		counter accept
	}
}
`
	err := sandbox.Do(ns, func() error {
		if err := load(rs); err != nil {
			return err
		}
		sandbox.Command(ns, "ip", "link", "set", "lo", "up").Run()
		if out, err := sandbox.Command(ns, "ping", "-c", "2", "-i", "0.2", "127.0.0.1").CombinedOutput(); err != nil {
			t.Fatalf("ping: %s %v", out, err)
		}
		if out, err := exec.Command("nft", "list", "counter", Family, Table, "drop_to_lo").Output(); err != nil || strings.Contains(string(out), "packets 0 ") {
			t.Fatalf("the named counter did not count: %s %v", out, err)
		}
		cur, err := Current()
		if err != nil {
			return err
		}
		want, err := wanted(rs)
		if err != nil {
			return err
		}
		if ch := cur.Changes(want); len(ch) > 0 {
			t.Errorf("a counter that counted is a change: %q", ch)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
