package firewall

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// state is a loaded table as `nft -s -j list table` writes it, holding
// objs, with the hash of the model it was rendered for.
func state(t *testing.T, hash string, objs ...string) *State {
	t.Helper()
	js := `{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"inet","name":"microvm","handle":1}}`
	for _, o := range objs {
		js += "," + o
	}
	s, err := parseState([]byte(js + "]}"))
	if err != nil {
		t.Fatal(err)
	}
	s.Hash = hash
	return s
}

// TestDiffDecides compares tables read into values, without root or nft:
// a missing table is created; a table is judged rule by rule, never by
// its hash; a change to a table rendered for this very model is a repair,
// one to a table of another model an update; other firewalls are warned
// of at every plan.
func TestDiffDecides(t *testing.T) {
	in := infra(t, 2)
	ruleset := render(in)
	hash := summarize(ruleset).Hash
	const (
		chain   = `{"chain":{"family":"inet","table":"microvm","handle":1,"name":"forward","type":"filter","hook":"forward","prio":0,"policy":"drop"}}`
		drop    = `{"rule":{"family":"inet","table":"microvm","chain":"forward","handle":5,"expr":[{"drop":null}],"comment":"isolation"}}`
		accept  = `{"rule":{"family":"inet","table":"microvm","chain":"forward","handle":6,"expr":[{"accept":null}],"comment":"isolation"}}`
		bridges = `{"set":{"family":"inet","table":"microvm","handle":2,"name":"vm_bridges","type":"ifname","elem":["br-vm1","br-vm2"]}}`
		one     = `{"set":{"family":"inet","table":"microvm","handle":2,"name":"vm_bridges","type":"ifname","elem":["br-vm1"]}}`
		swapped = `{"set":{"family":"inet","table":"microvm","handle":9,"name":"vm_bridges","type":"ifname","elem":["br-vm2","br-vm1"]}}`
	)
	wanted := state(t, "", bridges, chain, drop)
	conflicts := []string{"nftables chain ip filter FORWARD has policy drop: ..."}
	for _, tt := range []struct {
		name    string
		loaded  *State
		why     string // "" for no action
		changes []string
	}{
		{"no table", nil, "create", nil},
		{"as wanted", state(t, hash, bridges, chain, drop), "", nil},
		{"as wanted, handles and element order aside", state(t, hash, swapped, chain, drop), "", nil},
		{"as wanted, rendered for an older model", state(t, "sha256:0123456789abcdef", bridges, chain, drop), "", nil},
		{"a drop turned into an accept", state(t, hash, bridges, chain, accept), "repair (edited by hand)",
			[]string{`chain forward: rule "isolation" changed (drop -> accept)`}},
		{"a rule deleted", state(t, hash, bridges, chain), "repair (edited by hand)",
			[]string{`chain forward: rule "isolation" is missing`}},
		{"a table nft cannot list as JSON", &State{Hash: hash, unreadable: "reading nft -j output: unexpected end of JSON input"}, "repair (edited by hand)",
			[]string{"table inet microvm cannot be read back: reading nft -j output: unexpected end of JSON input"}},
		{"the table of a model with one VM", state(t, "sha256:0123456789abcdef", one, chain, drop), "update",
			[]string{"set vm_bridges lacks br-vm2"}},
	} {
		o := observed{loaded: tt.loaded, conflicts: conflicts}
		if tt.loaded != nil {
			o.wanted = wanted
		}
		d := diff(in, ruleset, o)
		if !slices.Equal(d.Warnings, conflicts) {
			t.Errorf("%s: warnings %q, want %q", tt.name, d.Warnings, conflicts)
		}
		if len(d.Cleanup)+len(d.Notes) > 0 {
			t.Errorf("%s: cleanup %v, notes %q; want none", tt.name, d.Cleanup, d.Notes)
		}
		if tt.why == "" {
			if !d.Empty() {
				t.Errorf("%s: got %v, want no action", tt.name, d.Setup)
			}
			continue
		}
		if len(d.Setup) != 1 {
			t.Errorf("%s: got %v, want one action", tt.name, d.Setup)
			continue
		}
		r := d.Setup[0].(*Replace)
		if r.Why != tt.why || !slices.Equal(r.Changes, tt.changes) || r.Ruleset != ruleset || r.Host != &in.Host {
			t.Errorf("%s: got %q %q, want %q %q (with the model's ruleset and host)", tt.name, r.Why, r.Changes, tt.why, tt.changes)
		}
		for _, c := range tt.changes {
			if !strings.Contains(r.String(), c) {
				t.Errorf("%s: the plan line does not say %q: %s", tt.name, c, r)
			}
		}
	}
}

// TestPublishWarnings: a published port the host listens on itself is
// warned of; the others are not.
func TestPublishWarnings(t *testing.T) {
	in, err := config.Load("testdata/openings.toml")
	if err != nil {
		t.Fatal(err)
	}
	got := publishWarnings(in, map[string]bool{"tcp 80": true, "tcp 22": true, "udp 80": true})
	if len(got) != 1 || !strings.HasPrefix(got[0], "vm.web publishes tcp 80, on which this host listens itself") {
		t.Errorf("warnings = %q, want one for web's tcp 80", got)
	}
}

// TestListening reads a real listener of a namespace from /proc/net.
func TestListening(t *testing.T) {
	ns := testenv.NetNS(t)
	publishing := infra(t, 2)
	publishing.VMs[0].Publish = []config.Publish{{Proto: "tcp", HostPort: 2222, VMPort: 22}}
	var got, without map[string]bool
	err := sandbox.Do(ns, func() error {
		l, err := net.Listen("tcp", "0.0.0.0:2222")
		if err != nil {
			return err
		}
		defer l.Close()
		got, without = listening(publishing), listening(infra(t, 2))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !got["tcp 2222"] || got["tcp 2223"] {
		t.Errorf("listening() = %v; want tcp 2222, and not 2223", got)
	}
	if len(without) != 0 {
		t.Errorf("listening() without a published port = %v; want nothing read", without)
	}
}
