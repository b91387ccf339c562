package cli

import (
	"encoding/json"
	"io"
)

// jsonVersion is the version of every JSON document the commands print
// (the "version" field of each). It goes up only when a field changes
// meaning or goes away; new fields may appear without it. docs/cli.md
// documents every field.
const jsonVersion = 1

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// orEmpty makes a nil list an empty one, so JSON has [] and not null.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
