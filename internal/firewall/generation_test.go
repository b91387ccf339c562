package firewall

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestGenerationProvesUntouched: a plan trusts the table without reading
// it only while nftables' generation is the one Replace recorded. Every
// change committed since, by hand to the table, to another table, a
// record rewritten, a stamp from another namespace, sends it back to
// reading and comparing the table, which finds the edits.
func TestGenerationProvesUntouched(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "nft")
	ns := testenv.NetNS(t)
	in := infra(t, 4)
	in.Host.RunDir = t.TempDir()
	more := infra(t, 5)
	more.Host.RunDir = in.Host.RunDir
	err := sandbox.Do(ns, func() error {
		trusted := func(step string, want bool) {
			t.Helper()
			if _, ok := lastLoaded(in.Host); ok != want {
				t.Errorf("%s: the generation proves the table untouched: %v, want %v", step, ok, want)
			}
		}
		changes := func(step string) []string {
			t.Helper()
			d, err := Diff(in)
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			if len(d.Setup) == 0 {
				return nil
			}
			return d.Setup[0].(*Replace).Changes
		}
		trusted("before any load", false)
		if err := (&Replace{Ruleset: Ruleset(in), Why: "create", Host: &in.Host}).Apply(); err != nil {
			return err
		}
		trusted("after the load", true)
		if got := changes("after the load"); got != nil {
			t.Errorf("after the load: changes %q, want none", got)
		}

		// An element added by hand: a transaction, so the table is read.
		if err := nft(`add element inet microvm vm_bridges { "eth9" }`, "-f", "-"); err != nil {
			return err
		}
		trusted("after an edit", false)
		if got, want := changes("after an edit"), []string{"set vm_bridges has an extra eth9"}; !slices.Equal(got, want) {
			t.Errorf("after an edit: changes %q, want %q", got, want)
		}
		if err := (&Replace{Ruleset: Ruleset(in), Why: "repair", Host: &in.Host}).Apply(); err != nil {
			return err
		}
		trusted("after the repair", true)

		// Another table: the generation moves, the table compares equal.
		if err := nft("add table ip other", "-f", "-"); err != nil {
			return err
		}
		trusted("after another table was added", false)
		if got := changes("after another table was added"); got != nil {
			t.Errorf("after another table was added: changes %q, want none", got)
		}
		if err := (&Replace{Ruleset: Ruleset(in), Why: "update", Host: &in.Host}).Apply(); err != nil {
			return err
		}
		trusted("after a load", true)

		// A model with one more VM, on the untouched table: an update of
		// its elements and counters, said from the two renderings.
		d, err := Diff(more)
		if err != nil {
			return err
		}
		if u, ok := d.Setup[0].(*Update); len(d.Setup) != 1 || !ok ||
			!slices.Contains(u.Changes, "set vm_bridges lacks br-vm5") ||
			!slices.Contains(u.Changes, "counter drop_from_vm5 is missing") {
			t.Errorf("one more VM: got %v, want an update adding br-vm5 and its counters", d.Setup)
		}

		// The record rewritten without a load: the stamp's hash no longer
		// matches it.
		rec, err := recordPath(in.Host)
		if err != nil {
			return err
		}
		if err := os.WriteFile(rec, []byte(Ruleset(more)), 0o644); err != nil {
			return err
		}
		trusted("with the record rewritten", false)
		if err := writeRecord(in.Host, Ruleset(in)); err != nil {
			return err
		}
		trusted("with the record back", true)

		// The same generation in another namespace (its cookie differs).
		gen, err := generationPath(in.Host)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(gen)
		if err != nil {
			return err
		}
		cookie, rest, _ := strings.Cut(string(b), " ")
		if err := os.WriteFile(gen, []byte(cookie+"1 "+rest), 0o644); err != nil {
			return err
		}
		trusted("with another namespace's stamp", false)

		// The table deleted: a transaction too.
		if err := os.WriteFile(gen, b, 0o644); err != nil {
			return err
		}
		trusted("with the stamp back", true)
		if err := nft("flush ruleset", "-f", "-"); err != nil {
			return err
		}
		trusted("after flush ruleset", false)
		if got := changes("after flush ruleset"); !slices.Equal(got, nil) {
			// A missing table is created: no changes listed, one action.
			t.Errorf("after flush ruleset: changes %q", got)
		}
		d, err = Diff(in)
		if err != nil {
			return err
		}
		if len(d.Setup) != 1 || d.Setup[0].(*Replace).Why != "create" {
			t.Errorf("after flush ruleset: got %v, want the table created", d.Setup)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTextChanges says what an update changes from the two renderings.
func TestTextChanges(t *testing.T) {
	two, three := render(infra(t, 2)), render(infra(t, 3))
	got := textChanges(two, three)
	for _, want := range []string{"set vm_bridges lacks br-vm3", "counter drop_from_vm3 is missing", "map vm_drops_from lacks br-vm3 : drop_from_vm3"} {
		if !slices.Contains(got, want) {
			t.Errorf("two VMs to three: changes %q lack %q", got, want)
		}
	}
	got = textChanges(three, two)
	for _, want := range []string{"set vm_bridges has an extra br-vm3", "extra counter drop_from_vm3"} {
		if !slices.Contains(got, want) {
			t.Errorf("three VMs to two: changes %q lack %q", got, want)
		}
	}
	if got := textChanges(two, two); got != nil {
		t.Errorf("the same rendering: changes %q, want none", got)
	}
}
