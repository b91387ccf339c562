package firewall

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Drift is judged rule by rule. Both the loaded table and the wanted one are
// read back from the kernel with `nft -s -j` (stateless, so counters do not
// count; a named counter's values, which nft 1.0.6 lists all the same, are
// left out): the wanted one from a network namespace of its own, made for the
// purpose and thrown away after. nft then writes both the same way, and what
// is left to normalise is what carries no meaning: handles, and the order of
// a set's elements (a hash set lists them in its hash order). The order of
// chains, sets and rules is kept; the order of rules is what a chain does.

// State is one loaded table in that canonical form.
type State struct {
	// Hash is the hash in the table's comment: which model the table was
	// rendered for when it was last loaded whole (an Update leaves the
	// comment). It tells an update (the model changed) from a repair (the
	// table was edited); it does not decide whether the table differs.
	Hash     string
	Rules    int // how many rules
	Elements int // how many set elements
	objects  []object
	// flags are the table's own flags as canonical JSON (as the text
	// listing writes them when the JSON is unreadable), "" for none:
	// "dormant" turns every chain of the table off.
	flags string
	// unreadable says why nft's listing of the loaded table could not be
	// read ("" when it could): such a table is replaced, never trusted.
	unreadable string
}

// object is one chain, set or rule (or any other object) of the table.
type object struct {
	kind  string   // "chain", "set", "rule", ...
	name  string   // the object's name; for a rule, its chain
	spec  string   // canonical JSON, without handles and elements
	elems []string // a set's or map's elements, canonical JSON, sorted
	body  map[string]any
}

// parseState reads `nft -j list table` output. It returns nil when the
// output holds no table.
func parseState(js []byte) (*State, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("reading nft -j output: %w", err)
	}
	var s *State
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			switch kind {
			case "metainfo":
				continue
			case "table":
				s = &State{}
				var t struct{ Flags any }
				if err := json.Unmarshal(raw, &t); err != nil {
					return nil, fmt.Errorf("reading nft -j output: %w", err)
				}
				if t.Flags != nil {
					s.flags = canon(t.Flags)
				}
				continue
			}
			if s == nil {
				return nil, fmt.Errorf("reading nft -j output: %s before the table", kind)
			}
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			var body map[string]any
			if err := d.Decode(&body); err != nil {
				return nil, fmt.Errorf("reading nft -j output: %w", err)
			}
			for _, k := range []string{"handle", "family", "table"} {
				delete(body, k)
			}
			if kind == "counter" {
				// A named counter's values: nft 1.0.6 lists them even
				// stateless (-s), and they count, they do not judge.
				delete(body, "packets")
				delete(body, "bytes")
			}
			obj := object{kind: kind, body: body}
			obj.name, _ = body["name"].(string)
			if kind == "rule" {
				obj.name, _ = body["chain"].(string)
				s.Rules++
			}
			if kind == "set" && slices.Contains(dynamicSets, obj.name) {
				// Filled by the egress resolver between loads: what they
				// hold is no drift, and a load empties them.
				delete(body, "elem")
			}
			if elems, ok := body["elem"].([]any); ok {
				for _, e := range elems {
					obj.elems = append(obj.elems, canon(e))
				}
				sort.Strings(obj.elems)
				s.Elements += len(elems)
				delete(body, "elem")
			}
			obj.spec = canon(body)
			s.objects = append(s.objects, obj)
		}
	}
	return s, nil
}

// canon is v as JSON with sorted keys, which encoding/json gives maps.
func canon(v any) string {
	// v was decoded from JSON (maps, slices, strings, numbers, bools), which
	// always encodes again.
	b, _ := json.Marshal(v)
	return string(b)
}

// Changes lists what differs between s (the loaded table; nil when there
// is none) and want, for a person, one change per line. None means the
// loaded table does exactly what the wanted one does.
func (s *State) Changes(want *State) []string {
	if s == nil {
		return []string{"table " + Family + " " + Table + " is missing"}
	}
	if s.unreadable != "" {
		if s.flags != "" && s.flags != want.flags {
			return []string{fmt.Sprintf("table %s has other flags (dormant turns every chain off)", Table)}
		}
		return []string{"table " + Family + " " + Table + " cannot be read back: " + s.unreadable}
	}
	var out []string
	if s.flags != want.flags {
		// Not their value: nft 1.0.6 writes a wrong one in its JSON.
		out = append(out, fmt.Sprintf("table %s has other flags (dormant turns every chain off)", Table))
	}
	type key struct{ kind, name string }
	index := func(st *State) (map[key]object, map[string][]object, []key) {
		objs, rules := map[key]object{}, map[string][]object{}
		var order []key
		for _, o := range st.objects {
			if o.kind == "rule" {
				rules[o.name] = append(rules[o.name], o)
				continue
			}
			k := key{o.kind, o.name}
			objs[k] = o
			order = append(order, k)
		}
		return objs, rules, order
	}
	have, haveRules, haveOrder := index(s)
	wantObjs, wantRules, wantOrder := index(want)
	for _, k := range wantOrder {
		w := wantObjs[k]
		h, ok := have[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s %s is missing", k.kind, k.name))
		case h.spec != w.spec:
			out = append(out, fmt.Sprintf("%s %s is defined differently%s", k.kind, k.name, policyChange(h.body, w.body)))
		default:
			missing, added := setDiff(w.elems, h.elems)
			for _, e := range missing {
				out = append(out, fmt.Sprintf("%s %s lacks %s", k.kind, k.name, elemText(e)))
			}
			for _, e := range added {
				out = append(out, fmt.Sprintf("%s %s has an extra %s", k.kind, k.name, elemText(e)))
			}
		}
	}
	for _, k := range haveOrder {
		if _, ok := wantObjs[k]; !ok {
			out = append(out, fmt.Sprintf("extra %s %s", k.kind, k.name))
		}
	}
	chains := map[string]bool{}
	for _, o := range append(append([]object{}, want.objects...), s.objects...) {
		if o.kind == "rule" && !chains[o.name] {
			chains[o.name] = true
			out = append(out, ruleChanges(o.name, haveRules[o.name], wantRules[o.name])...)
		}
	}
	return out
}

// ruleChanges compares the rules of one chain. A rule that is in one list
// but not the other is missing or extra; a missing and an extra rule with
// the same comment are one rule changed, with its verdict when that is
// what changed (a drop turned into an accept).
func ruleChanges(chain string, have, want []object) []string {
	specs := func(rs []object) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.spec)
		}
		return out
	}
	h, w := specs(have), specs(want)
	if strings.Join(h, "\n") == strings.Join(w, "\n") {
		return nil
	}
	missing, extra := setDiff(w, h)
	if len(missing) == 0 && len(extra) == 0 {
		return []string{fmt.Sprintf("chain %s: rules reordered", chain)}
	}
	bySpec := func(rs []object) map[string]object {
		m := map[string]object{}
		for _, r := range rs {
			m[r.spec] = r
		}
		return m
	}
	wantBy, haveBy := bySpec(want), bySpec(have)
	var out []string
	used := map[string]bool{}
	for _, m := range missing {
		wr := wantBy[m]
		paired := false
		for _, e := range extra {
			hr := haveBy[e]
			if used[e] || comment(hr) == "" || comment(hr) != comment(wr) {
				continue
			}
			used[e], paired = true, true
			out = append(out, fmt.Sprintf("chain %s: rule %s changed%s", chain, ruleText(wr), verdictChange(hr, wr)))
			break
		}
		if !paired {
			out = append(out, fmt.Sprintf("chain %s: rule %s is missing", chain, ruleText(wr)))
		}
	}
	for _, e := range extra {
		if !used[e] {
			out = append(out, fmt.Sprintf("chain %s: extra rule %s", chain, ruleText(haveBy[e])))
		}
	}
	return out
}

// setDiff returns what is in a and not in b, and what is in b and not in
// a, counting duplicates.
func setDiff(a, b []string) (onlyA, onlyB []string) { return minus(a, b), minus(b, a) }

// minus is a without b, counting duplicates.
func minus(a, b []string) []string {
	count := make(map[string]int, len(b))
	for _, x := range b {
		count[x]++
	}
	var out []string
	for _, x := range a {
		if count[x] > 0 {
			count[x]--
			continue
		}
		out = append(out, x)
	}
	return out
}

func comment(r object) string { s, _ := r.body["comment"].(string); return s }

// ruleText names a rule by its comment, or shows its expression.
func ruleText(r object) string {
	if c := comment(r); c != "" {
		return fmt.Sprintf("%q", c)
	}
	s := canon(r.body["expr"])
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return s
}

// verdicts are the statements that end a rule's evaluation.
var verdicts = []string{"accept", "drop", "reject", "jump", "goto", "return", "continue", "queue", "masquerade", "snat", "dnat"}

// verdictChange says " (drop -> accept)" when the rules' verdicts differ.
func verdictChange(have, want object) string {
	h, w := verdict(have), verdict(want)
	if h == w {
		return ""
	}
	return fmt.Sprintf(" (%s -> %s)", w, h)
}

func verdict(r object) string {
	expr, _ := r.body["expr"].([]any)
	for i := len(expr) - 1; i >= 0; i-- {
		if st, ok := expr[i].(map[string]any); ok {
			for _, v := range verdicts {
				if _, ok := st[v]; ok {
					return v
				}
			}
		}
	}
	return "no verdict"
}

// policyChange says " (policy accept -> drop)" when that is the difference.
func policyChange(have, want map[string]any) string {
	if have["policy"] != want["policy"] {
		return fmt.Sprintf(" (policy %v -> %v)", want["policy"], have["policy"])
	}
	return ""
}

// elemText shows a set element the way nft writes it.
func elemText(js string) string {
	d := json.NewDecoder(strings.NewReader(js))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return js
	}
	var show func(v any) string
	show = func(v any) string {
		switch e := v.(type) {
		case string:
			return e
		case json.Number:
			return e.String()
		case map[string]any:
			switch {
			case e["concat"] != nil:
				parts, _ := e["concat"].([]any)
				var s []string
				for _, p := range parts {
					s = append(s, show(p))
				}
				return strings.Join(s, " . ")
			case e["prefix"] != nil:
				p, _ := e["prefix"].(map[string]any)
				return fmt.Sprintf("%s/%s", show(p["addr"]), show(p["len"]))
			case e["range"] != nil:
				r, _ := e["range"].([]any)
				if len(r) == 2 {
					return show(r[0]) + "-" + show(r[1])
				}
			case e["elem"] != nil:
				inner, _ := e["elem"].(map[string]any)
				return show(inner["val"])
			}
		}
		return canon(v)
	}
	return show(v)
}

// loaded reads the table as the kernel has it, or nil when there is none.
func loaded() (*State, error) {
	js, err := exec.Command("nft", "-s", "-j", "list", "table", Family, Table).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && bytes.Contains(ee.Stderr, []byte("No such file")) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading nftables table %s %s: %w", Family, Table, cmdErr(err))
	}
	s, err := parseState(js)
	if err != nil {
		// A table whose listing nft cannot write as JSON is one to
		// replace, never to trust. nft 1.0.6 cuts its JSON short right
		// after a table's "flags", or not, depending on what else the
		// table holds: its text listing says which flags, the change to
		// report.
		return &State{unreadable: err.Error(), flags: textFlags()}, nil
	}
	return s, nil
}

// textFlags returns the flags of the loaded table as its text listing
// writes them ("dormant"), "" for none or when it cannot be read.
func textFlags() string {
	out, err := exec.Command("nft", "list", "table", Family, Table).Output()
	if err != nil {
		return ""
	}
	lines := strings.Split(string(out), "\n")
	for _, line := range lines[min(1, len(lines)):] {
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, "{") {
			break // a set's or a chain's flags are not the table's
		}
		if f, ok := strings.CutPrefix(line, "flags "); ok {
			return f
		}
	}
	return ""
}

// wanted is the canonical form of ruleset: the ruleset loaded into a
// network namespace of its own and read back. The last answer is kept, as
// the watcher asks about the same ruleset at every event.
func wanted(ruleset string) (*State, error) {
	wantedCache.Lock()
	defer wantedCache.Unlock()
	if wantedCache.ruleset == ruleset && wantedCache.state != nil {
		return wantedCache.state, nil
	}
	type result struct {
		js  []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread leaves its network namespace for a new, empty one and
		// never comes back: it stays locked, so the runtime ends it with
		// this goroutine, and the namespace goes with it. nft, started from
		// this thread, runs in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("making a network namespace to read the wanted table in: %w", err)}
			return
		}
		if err := nft(ruleset, "-f", "-"); err != nil {
			ch <- result{err: err}
			return
		}
		js, err := exec.Command("nft", "-s", "-j", "list", "table", Family, Table).Output()
		if err != nil {
			err = fmt.Errorf("reading back the wanted table: %w", cmdErr(err))
		}
		ch <- result{js, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	s, err := parseState(r.js)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("reading back the wanted table: nft lists no table %s %s", Family, Table)
	}
	wantedCache.ruleset, wantedCache.state = ruleset, s
	return s, nil
}

var wantedCache struct {
	sync.Mutex
	ruleset string
	state   *State
}
