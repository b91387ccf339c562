package firewall

import (
	"fmt"
	"slices"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Adding or removing a VM changes only set and map elements of the table
// and the VM's two counters. Loading the whole table again for that makes
// nft parse every element (3025 of them at 250 VMs: most of 50 ms), so
// when the generation proves the loaded table is exactly the ruleset the
// program last loaded (lastLoaded), plan derives from the two renderings
// the transaction that changes just those (delta), and Update commits it:
// still one nftables transaction, atomic like a whole load. Anything else
// that differs (a rule, a chain, a set's definition, the uplink's
// networks) is loaded whole (Replace).

// rendered is a ruleset the program rendered, read by the template's own
// layout: one object per "kind name {" line, a set's elements on one
// line. It serves only to compare two renderings.
type rendered struct {
	head  []string          // the table's own lines, but its comment (which holds the hash)
	objs  map[string]*block // by "kind name": "set vm_bridges", "counter drop_from_vm1"
	order []string
}

type block struct {
	lines []string // all but the elements: type, flags, comment, rules
	elems []string // as the template writes them: "br-vm1" . 10.1.0.2
}

func parseRendered(rs string) rendered {
	r := rendered{objs: map[string]*block{}}
	var cur *block
	for _, line := range strings.Split(rs, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case cur == nil && strings.HasSuffix(line, " {") && !strings.HasPrefix(line, "table "):
			key := strings.TrimSuffix(line, " {")
			cur = &block{}
			r.objs[key], r.order = cur, append(r.order, key)
		case cur != nil && line == "}":
			cur = nil
		case cur != nil && strings.HasPrefix(line, "elements = {"):
			list := strings.TrimSuffix(strings.TrimPrefix(line, "elements = {"), "}")
			for _, e := range strings.Split(list, ", ") {
				if e = strings.TrimSpace(e); e != "" {
					cur.elems = append(cur.elems, e)
				}
			}
		case cur != nil:
			cur.lines = append(cur.lines, line)
		case !strings.HasPrefix(line, "comment "):
			r.head = append(r.head, line)
		}
	}
	return r
}

// textChanges says what differs between two rulesets the program
// rendered, old the one loaded: set and map elements added and removed,
// objects missing or extra, rules missing or extra, in the words of
// State.Changes.
func textChanges(old, new string) []string {
	return changesOf(parseRendered(old), parseRendered(new), old != new)
}

// changesOf is textChanges of two parsed renderings, which differ when
// differ is set.
func changesOf(have, want rendered, differ bool) []string {
	unquote := func(e string) string { return strings.ReplaceAll(e, `"`, "") }
	var out []string
	for _, k := range want.order {
		h, ok := have.objs[k]
		if !ok {
			out = append(out, k+" is missing")
			continue
		}
		w := want.objs[k]
		missing, added := setDiff(w.elems, h.elems)
		for _, e := range missing {
			out = append(out, fmt.Sprintf("%s lacks %s", k, unquote(e)))
		}
		for _, e := range added {
			out = append(out, fmt.Sprintf("%s has an extra %s", k, unquote(e)))
		}
		if slices.Equal(w.lines, h.lines) {
			continue
		}
		missing, added = setDiff(w.lines, h.lines)
		for _, l := range missing {
			out = append(out, fmt.Sprintf("%s: %s is missing", k, l))
		}
		for _, l := range added {
			out = append(out, fmt.Sprintf("%s: extra %s", k, l))
		}
		if len(missing)+len(added) == 0 {
			out = append(out, k+": rules reordered")
		}
	}
	for _, k := range have.order {
		if _, ok := want.objs[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	if len(out) == 0 && differ {
		out = append(out, "the table's comment (its hash) differs")
	}
	return out
}

// wholeSets are the sets whose elements an Update leaves to a whole load:
// the uplink's networks, which change with the host, not with its VMs.
var wholeSets = []string{"set not_internet", "set not_internet6"}

// delta returns the nft script of the one transaction that turns the
// table from old into new, both rendered by the program, and ok false when
// they differ in anything but set and map elements and whole counters
// (wholeSets aside), or not at all. Counters are added first and deleted
// last, so that no map element ever names a missing one. A change to the
// VMs with an egress list also empties the egress sets, as a whole load
// does: no address a removed VM asked for stays for a VM given its name.
func delta(old, new string) (script string, ok bool) {
	return deltaOf(parseRendered(old), parseRendered(new))
}

// deltaOf is delta of two parsed renderings.
func deltaOf(have, want rendered) (script string, ok bool) {
	if !slices.Equal(have.head, want.head) {
		return "", false
	}
	var addCounters, deleteElems, addElems, deleteCounters, flush []string
	for _, k := range want.order {
		w := want.objs[k]
		kind, name, _ := strings.Cut(k, " ")
		h, ok := have.objs[k]
		if !ok {
			if kind != "counter" {
				return "", false
			}
			addCounters = append(addCounters, fmt.Sprintf("add counter %s %s %s { %s }", Family, Table, name, strings.Join(w.lines, "; ")))
			continue
		}
		if !slices.Equal(h.lines, w.lines) {
			return "", false
		}
		gone, added := onlyIn(h.elems, w.elems), onlyIn(w.elems, h.elems)
		if len(gone)+len(added) == 0 {
			continue
		}
		if slices.Contains(wholeSets, k) {
			return "", false
		}
		for _, e := range gone {
			deleteElems = append(deleteElems, fmt.Sprintf("delete element %s %s %s { %s }", Family, Table, name, e))
		}
		for _, e := range added {
			addElems = append(addElems, fmt.Sprintf("add element %s %s %s { %s }", Family, Table, name, e))
		}
		if name == "egress_vms" {
			for _, s := range dynamicSets {
				flush = append(flush, fmt.Sprintf("flush set %s %s %s", Family, Table, s))
			}
		}
	}
	for _, k := range have.order {
		if _, ok := want.objs[k]; ok {
			continue
		}
		kind, name, _ := strings.Cut(k, " ")
		if kind != "counter" {
			return "", false
		}
		deleteCounters = append(deleteCounters, fmt.Sprintf("delete counter %s %s %s", Family, Table, name))
	}
	cmds := slices.Concat(addCounters, deleteElems, addElems, deleteCounters, flush)
	if len(cmds) == 0 {
		return "", false // the comment alone: a whole load writes it
	}
	return strings.Join(cmds, "\n") + "\n", true
}

// onlyIn is what a holds and b does not, each once.
func onlyIn(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			in[x] = true
			out = append(out, x)
		}
	}
	return out
}

// Update turns the loaded table from Old, the ruleset the program last
// loaded, into Ruleset with Script, one transaction of set elements and
// counters (delta). It checks again, under the record lock, that the
// generation proves the table is Old; if it is not (nftables changed since
// the plan), or the transaction fails, it loads Ruleset whole as Replace
// does: the table is right either way. It records what Replace records,
// under the same lock. It leaves the table's comment, which keeps the
// hash of the ruleset last loaded whole (see Render).
type Update struct {
	Old, Ruleset string
	Script       string
	Changes      []string // what differs, as textChanges says
	Host         *config.Host
	Egress       []EgressVM // what the resolver serves for this ruleset, recorded with it
}

func (u *Update) String() string {
	return fmt.Sprintf("nft -f -  # update table %s %s in place (%s)%s (plan -v shows it)", Family, Table, u.summary(), listChanges(u.Changes))
}

// summary counts what Script does: "add 12 elements and 2 counters".
func (u *Update) summary() string {
	n := map[string]int{}
	for _, line := range strings.Split(u.Script, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			n[f[0]+" "+f[1]]++
		}
	}
	var parts []string
	for _, verb := range []string{"add", "delete"} {
		var what []string
		for _, obj := range []string{"element", "counter"} {
			switch c := n[verb+" "+obj]; c {
			case 0:
			case 1:
				what = append(what, "1 "+obj)
			default:
				what = append(what, fmt.Sprintf("%d %ss", c, obj))
			}
		}
		if len(what) > 0 {
			parts = append(parts, verb+" "+strings.Join(what, " and "))
		}
	}
	if n["flush set"] > 0 {
		parts = append(parts, "empty the egress sets")
	}
	return strings.Join(parts, ", ")
}

func (u *Update) Apply() error {
	unlock, err := lockRecord(*u.Host)
	if err != nil {
		return err
	}
	defer unlock()
	stamp, err := updateStamped(*u.Host, u.Old, u.Ruleset, u.Script)
	if err != nil {
		return err
	}
	return record(*u.Host, u.Ruleset, u.Egress, stamp)
}
