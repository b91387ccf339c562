package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// Pos is a place in infra.toml, for error messages.
type Pos struct {
	Line, Col int
}

// entry is one key of the file with the place it was written. Tables
// ([vm.vm1]) are entries too, with a nil value, so that a VM declared by an
// empty table still has a position.
type entry struct {
	path  []string
	key   Pos    // where the key (its last part) is written
	val   *value // nil for a table header
	isTbl bool
}

// value is a decoded TOML value: only the kinds infra.toml uses.
type value struct {
	kind unstable.Kind
	str  string // String; the raw text for other scalars
	list []string
	at   []Pos // where each element of list is written
	pos  Pos
}

// readTOML parses src into a flat list of entries, in file order, with their
// positions. The TOML library gives an AST with byte ranges; flattening it
// here lets every later error point at the exact line and column, which a
// plain Unmarshal into structs cannot do for semantic errors.
func readTOML(src []byte) ([]entry, error) {
	var p unstable.Parser
	p.Reset(src)
	var (
		out    []entry
		prefix []string
		seen   = map[string]Pos{} // full dotted path -> where it was set
		tables = map[string]Pos{} // explicit [table] headers
		dotted = map[string]Pos{} // tables made by dotted keys (a.b = 1 makes a)
	)
	pos := func(r unstable.Range) Pos {
		s := p.Shape(r)
		return Pos{s.Start.Line, s.Start.Column}
	}
	// keyOf reads a (possibly dotted) key from an iterator over Key nodes.
	keyOf := func(it unstable.Iterator) ([]string, Pos) {
		var parts []string
		var last Pos
		for it.Next() {
			n := it.Node()
			if n.Kind != unstable.Key {
				continue
			}
			parts = append(parts, string(n.Data))
			last = pos(n.Raw)
		}
		return parts, last
	}
	var addKV func(path []string, at Pos, n *unstable.Node) error
	addKV = func(path []string, at Pos, n *unstable.Node) error {
		full := strings.Join(path, ".")
		if prev, ok := seen[full]; ok {
			return &Error{Pos: at, Msg: fmt.Sprintf("%s is set twice (first at line %d); keep one", full, prev.Line)}
		}
		seen[full] = at
		if n.Kind == unstable.InlineTable {
			out = append(out, entry{path: path, key: at, isTbl: true})
			it := n.Children()
			for it.Next() {
				kv := it.Node()
				if kv.Kind != unstable.KeyValue {
					continue
				}
				sub, subAt := keyOf(kv.Key())
				if err := addKV(append(append([]string{}, path...), sub...), subAt, kv.Value()); err != nil {
					return err
				}
			}
			return nil
		}
		v, err := decodeValue(n, at, pos)
		if err != nil {
			return err
		}
		out = append(out, entry{path: path, key: at, val: v})
		return nil
	}

	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			path, at := keyOf(e.Children())
			full := strings.Join(path, ".")
			if prev, ok := tables[full]; ok {
				return nil, &Error{Pos: at, Msg: fmt.Sprintf("table [%s] is declared twice (first at line %d); merge them", full, prev.Line)}
			}
			if prev, ok := seen[full]; ok {
				return nil, &Error{Pos: at, Msg: fmt.Sprintf("table [%s] was already set at line %d", full, prev.Line)}
			}
			if prev, ok := dotted[full]; ok {
				// TOML forbids reopening a table that dotted keys defined.
				return nil, &Error{Pos: at, Msg: fmt.Sprintf("table [%s] was already defined by a dotted key at line %d; write its keys in one place", full, prev.Line)}
			}
			tables[full] = at
			prefix = path
			out = append(out, entry{path: path, key: at, isTbl: true})
		case unstable.ArrayTable:
			path, at := keyOf(e.Children())
			return nil, &Error{Pos: at, Msg: fmt.Sprintf("[[%s]] arrays of tables are not used in infra.toml; write [%s] instead", strings.Join(path, "."), strings.Join(path, "."))}
		case unstable.KeyValue:
			sub, at := keyOf(e.Key())
			path := append(append([]string{}, prefix...), sub...)
			for i := len(prefix) + 1; i < len(path); i++ {
				if _, ok := dotted[strings.Join(path[:i], ".")]; !ok {
					dotted[strings.Join(path[:i], ".")] = at
				}
			}
			if err := addKV(path, at, e.Value()); err != nil {
				return nil, err
			}
		}
	}
	if err := p.Error(); err != nil {
		var perr *unstable.ParserError
		if errors.As(err, &perr) && len(perr.Highlight) > 0 {
			return nil, &Error{Pos: pos(p.Range(perr.Highlight)), Msg: "TOML syntax: " + perr.Message}
		}
		return nil, &Error{Pos: Pos{1, 1}, Msg: "TOML syntax: " + err.Error()}
	}
	return out, nil
}

func decodeValue(n *unstable.Node, at Pos, pos func(unstable.Range) Pos) (*value, error) {
	v := &value{kind: n.Kind, pos: at}
	if n.Raw.Length > 0 {
		v.pos = pos(n.Raw)
	}
	switch n.Kind {
	case unstable.Array:
		it := n.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			if c.Kind != unstable.String {
				return nil, &Error{Pos: at, Msg: "arrays in infra.toml hold only strings"}
			}
			v.list = append(v.list, string(c.Data))
			at := v.pos
			if c.Raw.Length > 0 {
				at = pos(c.Raw)
			}
			v.at = append(v.at, at)
		}
	default:
		v.str = string(n.Data)
	}
	return v, nil
}

// kindName names a TOML kind the way a user writes it.
func kindName(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "an integer"
	case unstable.Bool:
		return "true or false"
	case unstable.Float:
		return "a decimal number"
	case unstable.Array:
		return "a list"
	case unstable.InlineTable, unstable.Table:
		return "a table"
	default:
		return "a date or time"
	}
}

// asInt reads an integer value, with TOML's underscores and 0x/0o/0b forms.
func (v *value) asInt() (int64, bool) {
	if v.kind != unstable.Integer {
		return 0, false
	}
	s := strings.ReplaceAll(v.str, "_", "")
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		// 0o17 is accepted by ParseInt with base 0; a leading zero is not
		// TOML, but the parser already rejected it.
		return 0, false
	}
	return n, true
}
