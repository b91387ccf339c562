package cli

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// jsonDocs are the JSON documents the commands print, for docs/cli.md and
// for checking real output against.
var jsonDocs = []struct {
	command string
	doc     any
}{
	{"status --json (--host adds host)", statusDoc{}},
	{"plan --json", planDoc{}},
	{"validate --json", validateDoc{}},
	{"info --json", infoDoc{}},
	{"image list --json", imagesDoc{}},
	{"snapshots --json", snapshotsDoc{}},
	{"top --json", topDoc{}},
}

// TestDoc: docs/cli.md is the help of the whole command tree, and the JSON
// documents' fields, as the code has them (go test -update rewrites it).
// It is the golden file of every command's help.
func TestDoc(t *testing.T) {
	var b strings.Builder
	b.WriteString(`# The microvm command line

Generated from the command tree by ` + "`go test ./internal/cli -run TestDoc -update`" + `,
and checked against it by the same test: this is exactly what
` + "`microvm help COMMAND`" + ` prints.

- **Flags** go anywhere, before or after the command, in GNU form (` + "`--json`, `-f FILE`, `--file=FILE`" + `);
  ` + "`--`" + ` ends them (` + "`microvm exec vm1 -- ls -la`" + `).
- **The file**: every command but ` + "`demo`" + ` reads infra.toml (the fleet's ` + "`fleet push`" + `, ` + "`status`" + `, ` + "`move`" + ` and the like read etcd instead): the one ` + "`-f/--file`" + ` names,
  else ` + "`$MICROVM_CONFIG`" + `, else ` + "`./infra.toml`" + ` if there is one, else
  ` + "`/etc/microvm/infra.toml`" + `. In ` + "`logs`" + `, ` + "`-f`" + ` is ` + "`--follow`" + ` and the file is ` + "`--file`" + `.
- **Exit status**: 0 done, 1 failed (the message says why and what to do), 2 a mistake
  on the command line; ` + "`plan --detailed-exitcode`" + ` exits 2 when there are changes;
  ` + "`ssh`" + ` and ` + "`exec`" + ` exit with the command's status.
- **microvm.nix**: ` + "`microvm -u NAME...`" + ` is ` + "`update`" + ` (it restarts what changed, as microvm.nix's
  ` + "`-Ru`" + ` does; ` + "`-R`" + ` is accepted), ` + "`-r NAME`" + ` is ` + "`run`" + `, ` + "`-l`" + ` is ` + "`list`" + `.
- **Completion**: ` + "`microvm completion bash|zsh|fish`" + ` (commands, flags, VM names).

`)
	var all [][]string
	all = append(all, nil)
	for _, c := range commands() {
		all = append(all, []string{c.name})
		for _, s := range c.sub {
			all = append(all, []string{c.name, s.name})
		}
	}
	for _, n := range all {
		out, _, code := mainOut(append([]string{"help"}, n...)...)
		if code != 0 {
			t.Fatalf("help %v: exit %d", n, code)
		}
		fmt.Fprintf(&b, "## %s\n\n```text\n%s```\n\n", strings.TrimSpace("microvm "+strings.Join(n, " ")), out)
	}
	b.WriteString(`## JSON

Every ` + "`--json`" + ` prints one object whose ` + "`version`" + ` field is the version of
its format: it changes only when a field changes meaning or goes away; new
fields may appear without it. Times are RFC 3339, sizes bytes. A field
marked optional is left out when it does not apply.

`)
	for _, d := range jsonDocs {
		fmt.Fprintf(&b, "### microvm %s\n\n| field | type | meaning |\n| --- | --- | --- |\n", d.command)
		for _, f := range fields(reflect.TypeOf(d.doc), "") {
			opt := ""
			if f.optional {
				opt = " (optional)"
			}
			fmt.Fprintf(&b, "| `%s` | %s%s | %s |\n", f.path, f.kind, opt, f.doc)
		}
		b.WriteString("\n")
	}
	testenv.Golden(t, "../../../docs/cli.md", strings.TrimSuffix(b.String(), "\n"))
}

// field is one field of a JSON document, with its dotted path.
type field struct {
	path, kind, doc string
	optional        bool
}

// fields lists the fields of struct type t, depth first.
func fields(t reflect.Type, prefix string) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, opts, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		f := field{path: prefix + name, kind: kindOf(sf.Type), doc: sf.Tag.Get("doc"), optional: strings.Contains(opts, "omitempty")}
		out = append(out, f)
		if e := elem(sf.Type); e.Kind() == reflect.Struct && e != timeType {
			sub := prefix + name + "."
			if sf.Type.Kind() == reflect.Slice {
				sub = prefix + name + "[]."
			}
			out = append(out, fields(e, sub)...)
		}
	}
	return out
}

var timeType = reflect.TypeOf(time.Time{})

// elem is t without pointers and slices.
func elem(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	return t
}

// kindOf names t's JSON type.
func kindOf(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == timeType:
		return "string (time)"
	case t.Kind() == reflect.Slice:
		return "array of " + kindOf(t.Elem()) + "s"
	case t.Kind() == reflect.Struct:
		return "object"
	case t.Kind() == reflect.String:
		return "string"
	case t.Kind() == reflect.Bool:
		return "boolean"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "integer"
	}
	return t.Kind().String()
}

// checkShape checks a JSON document printed by a command against the Go
// type docs/cli.md documents: every field it has is documented, with the
// documented JSON type, and every field not marked optional is there.
func checkShape(t *testing.T, out string, doc any) {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, p := range shapeErrors(v, reflect.TypeOf(doc), "") {
		t.Errorf("%s\nin:\n%s", p, out)
	}
	if m, ok := v.(map[string]any); !ok || m["version"] != float64(jsonVersion) {
		t.Errorf("no \"version\": %d at the top:\n%s", jsonVersion, out)
	}
}

func shapeErrors(v any, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(want string) []string {
		return []string{fmt.Sprintf("%s: got %T (%v), want %s", path, v, v, want)}
	}
	switch {
	case t == timeType:
		s, ok := v.(string)
		if _, err := time.Parse(time.RFC3339, s); !ok || err != nil {
			return bad("an RFC 3339 time")
		}
	case t.Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("an object")
		}
		var errs []string
		seen := map[string]bool{}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			name, opts, _ := strings.Cut(sf.Tag.Get("json"), ",")
			seen[name] = true
			fv, ok := m[name]
			if !ok {
				if !strings.Contains(opts, "omitempty") {
					errs = append(errs, fmt.Sprintf("%s.%s is missing", path, name))
				}
				continue
			}
			errs = append(errs, shapeErrors(fv, sf.Type, path+"."+name)...)
		}
		for k := range m {
			if !seen[k] {
				errs = append(errs, fmt.Sprintf("%s.%s is not documented", path, k))
			}
		}
		return errs
	case t.Kind() == reflect.Slice:
		a, ok := v.([]any)
		if !ok {
			return bad("an array (never null)")
		}
		var errs []string
		for i, e := range a {
			errs = append(errs, shapeErrors(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	case t.Kind() == reflect.String:
		if _, ok := v.(string); !ok {
			return bad("a string")
		}
	case t.Kind() == reflect.Bool:
		if _, ok := v.(bool); !ok {
			return bad("a boolean")
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		if f, ok := v.(float64); !ok || f != float64(int64(f)) {
			return bad("an integer")
		}
	}
	return nil
}

// TestJSONWithoutRoot checks the documents a command prints without root
// or a running VM; TestJSONHost (host_test.go) the others.
func TestJSONWithoutRoot(t *testing.T) {
	out, _, code := mainOut("validate", "--json", "-f", example)
	if code != 0 {
		t.Fatalf("validate --json: exit %d", code)
	}
	checkShape(t, out, validateDoc{})
	out, _, code = mainOut("validate", "--json", "-f", "../config/testdata/bad/many-errors.toml")
	if code != 1 || !strings.Contains(out, `"ok": false`) {
		t.Errorf("validate --json of a bad file: exit %d\n%s", code, out)
	}
	checkShape(t, out, validateDoc{})
	// A shape check that cannot fail proves nothing.
	if errs := shapeErrors(map[string]any{"version": 1.0, "extra": true}, reflect.TypeOf(planDoc{}), ""); len(errs) < 2 {
		t.Errorf("a document with an unknown field and missing ones passes: %v", errs)
	}
}
