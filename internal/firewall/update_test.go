package firewall

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// vmsOf writes a [vm.vmI] table for each i, on 10.I.0.0/24 as infra does.
func vmsOf(ids ...int) string {
	var b strings.Builder
	for _, i := range ids {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = \"10.%d.%d.0/24\"\n", i, i/256, i%256)
	}
	return b.String()
}

const hostTable = "[host]\nuplink = \"eth0\"\n"

func model(t testing.TB, src string) *config.Infra {
	t.Helper()
	in, err := config.Parse("test.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// deltaCases are changes of the model, with whether delta turns one
// table into the other, and lines its script must hold.
var deltaCases = []struct {
	name     string
	old, new string
	ok       bool
	want     []string
}{
	{"a VM added", hostTable + vmsOf(1, 2, 3), hostTable + vmsOf(1, 2, 3, 4), true, []string{
		`add counter inet microvm drop_from_vm4 { comment "what the firewall dropped of what vm4 sent" }`,
		`add element inet microvm vm_bridges { "br-vm4" }`,
		`add element inet microvm vm_subnets { 10.0.4.0/24 }`,
		`add element inet microvm vm_drops_to { "br-vm4" : "drop_to_vm4" }`,
	}},
	{"a VM removed", hostTable + vmsOf(1, 2, 3, 4), hostTable + vmsOf(1, 2, 3), true, []string{
		`delete element inet microvm vm_bridges { "br-vm4" }`,
		`delete element inet microvm vm_drops_from { "br-vm4" : "drop_from_vm4" }`,
		`delete counter inet microvm drop_from_vm4`,
		`delete counter inet microvm drop_to_vm4`,
	}},
	{"one VM added, one removed", hostTable + vmsOf(1, 2, 3), hostTable + vmsOf(1, 2, 4), true, []string{
		`add counter inet microvm drop_to_vm4 { comment "what the firewall dropped of what was sent to vm4" }`,
		`delete element inet microvm vm_subnets6 { fddc:b7cf:609b:3::/64 }`,
		`add element inet microvm vm_gateways { "br-vm4" . 10.0.4.1 }`,
		`delete counter inet microvm drop_to_vm3`,
	}},
	{"an opening between VMs added", hostTable + vmsOf(1, 2), hostTable + vmsOf(1, 2) + `allow = ["vm:vm1 tcp 22"]` + "\n", true, []string{
		`add element inet microvm vm_openings { "br-vm2" . 10.0.1.2 . tcp . 22 }`,
	}},
	{"a port published", hostTable + vmsOf(1), hostTable + vmsOf(1) + `publish = ["tcp 80"]` + "\n", true, []string{
		`add element inet microvm published { tcp . 80 : 10.0.1.2 . 80 }`,
		`add element inet microvm published_from { tcp . 80 . 0.0.0.0/0 }`,
	}},
	{"a VM with an egress list added", hostTable + vmsOf(1), hostTable + vmsOf(1, 2) + `egress = ["deb.debian.org"]` + "\n", true, []string{
		`add element inet microvm egress_vms { "br-vm2" }`,
		`flush set inet microvm egress_addrs`,
		`flush set inet microvm egress_addrs6`,
	}},
	{"an allow rule added", hostTable + vmsOf(1, 2), hostTable + vmsOf(1, 2) + `allow = ["192.168.1.20 tcp 445"]` + "\n", false, nil},
	{"VMs may reach the tailnet", hostTable + vmsOf(1, 2), hostTable + "[host.tailscale]\nallow_vm_to_tailnet = true\n" + vmsOf(1, 2), false, nil},
	{"the same model", hostTable + vmsOf(1, 2), hostTable + vmsOf(1, 2), false, nil},
}

// TestDelta derives the transaction from two renderings: only set and map
// elements and whole counters, counters added before and deleted after
// the elements that name them; anything else is not possible.
func TestDelta(t *testing.T) {
	for _, tt := range deltaCases {
		script, ok := delta(render(model(t, tt.old)), render(model(t, tt.new)))
		if ok != tt.ok {
			t.Errorf("%s: possible %v, want %v; script:\n%s", tt.name, ok, tt.ok, script)
			continue
		}
		if !ok {
			if script != "" {
				t.Errorf("%s: not possible, yet a script:\n%s", tt.name, script)
			}
			continue
		}
		lines := strings.Split(strings.TrimSuffix(script, "\n"), "\n")
		for _, w := range tt.want {
			if !strings.Contains(script, w+"\n") {
				t.Errorf("%s: the script lacks %q:\n%s", tt.name, w, script)
			}
		}
		// Counters first and last: the elements come between.
		stage := 0
		for _, l := range lines {
			s := map[string]int{"add counter": 0, "delete element": 1, "add element": 1, "delete counter": 2, "flush set": 3}[strings.Join(strings.Fields(l)[:2], " ")]
			if s < stage {
				t.Errorf("%s: %q comes too late:\n%s", tt.name, l, script)
			}
			stage = max(stage, s)
		}
	}

	// The uplink's networks are elements too, but the host's: loaded whole.
	in := model(t, hostTable+vmsOf(1))
	if script, ok := delta(Render(in, uplinkNets), Render(in, uplinkNets[:1])); ok {
		t.Errorf("the uplink's networks changed: an update, want a whole load:\n%s", script)
	}
}

// TestUpdateString says what the transaction does, and what changes.
func TestUpdateString(t *testing.T) {
	in := model(t, hostTable+vmsOf(1, 2, 4))
	old, new := render(model(t, hostTable+vmsOf(1, 2, 3))), render(in)
	script, _ := delta(old, new)
	u := &Update{Old: old, Ruleset: new, Script: script, Changes: textChanges(old, new)}
	want := "nft -f -  # update table inet microvm in place (add 12 elements and 2 counters, delete 12 elements and 2 counters): " +
		"set vm_bridges lacks br-vm4; set vm_bridges has an extra br-vm3; set vm_sources lacks br-vm4 . 10.0.4.2 . " + in.VMs[2].MAC.String() + "; and 25 more (plan -v shows it)"
	if got := u.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestUpdate applies each change delta can make to a table Replace
// loaded, in a network namespace of its own: plan gives an Update, which
// commits one transaction (the generation goes up by one) and leaves the
// table's comment (so it did not load the table whole); after it, the
// table compares equal rule by rule and element by element with the one
// wanted, and the next plan has nothing to do, proven by the generation.
// Then what must not take that path: a table edited between plan and
// apply, a transaction nft refuses, a change of a rule; and an edit after
// an update is called a repair.
func TestUpdate(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	run := t.TempDir()
	load := func(src string) *config.Infra {
		in := model(t, src)
		in.Host.RunDir = run
		return in
	}
	do := func(f func() error) {
		t.Helper()
		if err := sandbox.Do(ns, f); err != nil {
			t.Fatal(err)
		}
	}
	replace := func(in *config.Infra) error {
		return (&Replace{Ruleset: Ruleset(in), Why: "create", Host: &in.Host}).Apply()
	}
	plan := func(in *config.Infra) action.Action {
		t.Helper()
		d, err := Diff(in)
		if err != nil || len(d.Setup) != 1 {
			t.Fatalf("plan: %v %v, want one action", d.Setup, err)
		}
		return d.Setup[0]
	}
	// as checks that the table is in's, and whether it was loaded whole.
	as := func(step string, in *config.Infra, hashOf *config.Infra) {
		t.Helper()
		want, err := wanted(Ruleset(in))
		if err != nil {
			t.Fatal(err)
		}
		cur, err := Current()
		if err != nil {
			t.Fatal(err)
		}
		if ch := cur.Changes(want); len(ch) > 0 {
			t.Errorf("%s: the table differs from the wanted one: %q", step, ch)
		}
		if got, want := cur.Hash, summarize(Ruleset(hashOf)).Hash; got != want {
			t.Errorf("%s: the table's comment has %s, want %s", step, got, want)
		}
		if rs, ok := lastLoaded(in.Host); !ok || rs != Ruleset(in) {
			t.Errorf("%s: the generation does not prove the table is the wanted one", step)
		}
		if d, err := Diff(in); err != nil || !d.Empty() {
			t.Errorf("%s: the next plan: %v %v, want nothing", step, d.Setup, err)
		}
	}

	big := 20
	ids := func(from, to int) []int {
		var out []int
		for i := from; i <= to; i++ {
			out = append(out, i)
		}
		return out
	}
	cases := deltaCases
	cases = append(cases, struct {
		name     string
		old, new string
		ok       bool
		want     []string
	}{fmt.Sprintf("a VM added, one removed, of %d", big), hostTable + vmsOf(ids(1, big)...), hostTable + vmsOf(ids(2, big+1)...), true, nil})
	for _, tt := range cases {
		if !tt.ok {
			continue
		}
		old, new := load(tt.old), load(tt.new)
		do(func() error {
			if err := replace(old); err != nil {
				return err
			}
			u, ok := plan(new).(*Update)
			if !ok {
				t.Errorf("%s: plan %v, want an update", tt.name, u)
				return nil
			}
			// VMs coming and going are sent as the program's own batch;
			// the rest is nft's to parse.
			byNft := map[string]bool{"an opening between VMs added": true, "a port published": true, "a VM with an egress list added": true}
			if _, err := encodeDelta(u.Script, setTypes(parseRendered(u.Ruleset))); (err == nil) == byNft[tt.name] {
				t.Errorf("%s: encoding the batch: %v; want it left to nft: %v", tt.name, err, byNft[tt.name])
			}
			before, err := generation()
			if err != nil {
				return err
			}
			if err := u.Apply(); err != nil {
				return err
			}
			if after, err := generation(); err != nil || after != before+1 {
				t.Errorf("%s: generation %d before, %d after (%v): want one transaction", tt.name, before, after, err)
			}
			as(tt.name, new, old)
			return nil
		})
	}

	a, b := load(hostTable+vmsOf(ids(1, big)...)), load(hostTable+vmsOf(ids(1, big+1)...))
	do(func() error {
		// Edited by hand between plan and apply: Update loads it whole.
		if err := replace(a); err != nil {
			return err
		}
		u := plan(b).(*Update)
		if err := nft(`add element inet microvm vm_bridges { "eth9" }`, "-f", "-"); err != nil {
			return err
		}
		if err := u.Apply(); err != nil {
			return err
		}
		as("edited between plan and apply", b, b)

		// A transaction nft refuses: loaded whole.
		if err := replace(a); err != nil {
			return err
		}
		u = plan(b).(*Update)
		u.Script = `delete element inet microvm vm_bridges { "br-none" }` + "\n"
		if err := u.Apply(); err != nil {
			return err
		}
		as("a transaction nft refuses", b, b)

		// An edit after an update: a repair, though the table's comment
		// names the ruleset loaded before.
		if err := replace(a); err != nil {
			return err
		}
		if err := plan(b).Apply(); err != nil {
			return err
		}
		if err := nft(`delete element inet microvm vm_bridges { "br-vm1" }`, "-f", "-"); err != nil {
			return err
		}
		if r, ok := plan(b).(*Replace); !ok || r.Why != "repair (edited by hand)" {
			t.Errorf("an edit after an update: plan %v, want a repair", plan(b))
		}

		// A rule changes: loaded whole.
		if err := replace(a); err != nil {
			return err
		}
		c := load(hostTable + vmsOf(ids(1, big)...) + `allow = ["192.168.1.20 tcp 445"]` + "\n")
		if r, ok := plan(c).(*Replace); !ok || r.Why != "update" {
			t.Errorf("a rule added: plan %v, want the table loaded whole", plan(c))
		}
		return nil
	})
}

// BenchmarkAddVM loads the table of N = 250 VMs, then one more VM: the
// whole table again (Replace), or the update of its elements and counters
// (Update, what plan gives when the generation proves the table).
func BenchmarkAddVM(b *testing.B) {
	testenv.NeedRoot(b)
	testenv.NeedCommands(b, "nft")
	ns := testenv.NetNS(b)
	const n = 250
	from, to := infra(b, n), infra(b, n+1)
	from.Host.RunDir = b.TempDir()
	to.Host.RunDir = from.Host.RunDir
	for _, whole := range []bool{true, false} {
		name := map[bool]string{true: "replace", false: "update"}[whole]
		b.Run(name, func(b *testing.B) {
			err := sandbox.Do(ns, func() error {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if err := (&Replace{Ruleset: Ruleset(from), Why: "create", Host: &from.Host}).Apply(); err != nil {
						return err
					}
					var a action.Action = &Replace{Ruleset: Ruleset(to), Why: "update", Host: &to.Host}
					if !whole {
						d, err := Diff(to)
						if err != nil {
							return err
						}
						if _, ok := d.Setup[0].(*Update); !ok {
							return fmt.Errorf("plan %v, want an update", d.Setup)
						}
						a = d.Setup[0]
					}
					b.StartTimer()
					if err := a.Apply(); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestBatchNeedsItsGeneration: the program's own batch commits only while
// the namespace's generation is the one it proved: after any other change
// the kernel refuses it, and nothing of it is in the table.
func TestBatchNeedsItsGeneration(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	old, new := render(model(t, hostTable+vmsOf(1, 2))), render(model(t, hostTable+vmsOf(1, 2, 3)))
	script, ok := delta(old, new)
	if !ok {
		t.Fatal("no delta for a VM added")
	}
	err := sandbox.Do(ns, func() error {
		if err := load(old); err != nil {
			return err
		}
		gen, err := generation()
		if err != nil {
			return err
		}
		if err := nft(`add element inet microvm vm_bridges { "br-other" }`, "-f", "-"); err != nil {
			return err
		}
		if err := sendDelta(script, setTypes(parseRendered(new)), gen); !errors.Is(err, unix.ERESTART) {
			t.Errorf("a batch for generation %d after another change: %v, want ERESTART", gen, err)
		}
		cur, err := Current()
		if err != nil {
			return err
		}
		if cur.Elements != summarize(old).Elements+1 {
			t.Errorf("the table has %d elements, want the %d it had and the one added by hand", cur.Elements, summarize(old).Elements+1)
		}
		gen, err = generation()
		if err != nil {
			return err
		}
		return sendDelta(script, setTypes(parseRendered(new)), gen)
	})
	if err != nil {
		t.Errorf("the batch for the current generation: %v", err)
	}
}
