package config

import (
	"fmt"
	"slices"
	"strings"
)

// A VM's table, and an image's, has sub-tables of named entries, each an
// inline table of keys:
//
//	[vm.web.files]                 the files it gets, by path
//	[vm.db.secrets]                its secrets, by name
//	[vm.db.volumes]                its block devices, by name
//
// They are read the same way, by subTables.

// subTables are the sub-tables of a [vm.NAME] or [image.NAME] table: their
// keys, and an example for messages.
var subTables = map[string]struct {
	keys    []string
	example string
	what    string // one entry, for messages: "a file"
}{
	"files":   {fileKeys, `e.g. "/etc/motd" = { content = "hello\n" } or "/etc/app.conf" = { source = "files/app.conf", mode = "0640" }`, "a file"},
	"secrets": {secretKeys, `e.g. password = { sops = "secrets/db.yaml", key = "password" } or token = { file = "/etc/microvm/secrets/token" }`, "a secret"},
	"volumes": {volumeKeys, `e.g. data = { size = "4G", mount = "/var/lib/postgresql", owner = "postgres" }`, "a volume"},
}

// rawEntries is a sub-table as written: a name, then its keys.
type rawEntries struct {
	at     Pos
	order  []string
	byName map[string]*rawEntry
}

type rawEntry struct {
	at   Pos
	vals map[string]*value
}

// putEntry stores entry e of a sub-table. e.path[i] is the sub-table's
// name; below it come the entry's name, then one of its keys.
func (p *parser) putEntry(subs map[string]*rawEntries, e entry, i int, table string, unknown func(entry, int, string)) {
	sub := e.path[i]
	kind := subTables[sub]
	if subs[sub] == nil {
		subs[sub] = &rawEntries{at: e.key, byName: map[string]*rawEntry{}}
	}
	t := subs[sub]
	rest := e.path[i+1:]
	name := strings.Trim(table, "[]")
	switch {
	case len(rest) == 0:
		if !e.isTbl {
			unknown(e, i+1, fmt.Sprintf("%s in %s must be a table; write [%s.%s] and below it one line each, %s", sub, table, name, sub, kind.example))
		}
	case len(rest) == 1:
		if !e.isTbl {
			unknown(e, i+2, fmt.Sprintf("%s.%s: %q must be a table of %s; %s", name, sub, rest[0], strings.Join(kind.keys, ", "), kind.example))
			return
		}
		if t.byName[rest[0]] == nil {
			t.byName[rest[0]] = &rawEntry{at: e.key, vals: map[string]*value{}}
			t.order = append(t.order, rest[0])
		}
	case len(rest) == 2 && !e.isTbl && slices.Contains(kind.keys, rest[1]):
		r := t.byName[rest[0]]
		if r == nil { // a dotted key: password.sops = "..."
			r = &rawEntry{at: e.key, vals: map[string]*value{}}
			t.byName[rest[0]] = r
			t.order = append(t.order, rest[0])
		}
		r.vals[rest[1]] = e.val
	default:
		k := rest[len(rest)-1]
		unknown(e, len(e.path), fmt.Sprintf("unknown key %q in %s.%s %q; %s has %s%s", k, name, sub, rest[0], kind.what, strings.Join(kind.keys, ", "), suggest(k, kind.keys)))
	}
}
