package cli

import (
	"bytes"
	"strings"
	"testing"
)

// main runs the CLI in-process, without root, in this namespace: only for
// commands that read nothing from the host.
func mainOut(args ...string) (string, string, int) {
	var out, errw bytes.Buffer
	code := Main(args, &out, &errw)
	return out.String(), errw.String(), code
}

func TestCommands(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		out, err string // substrings expected on stdout and stderr
	}{
		{nil, 2, "Usage: microvm COMMAND", ""},
		{[]string{"help"}, 0, "sudo microvm demo", ""},
		{[]string{"--help"}, 0, "Commands:", ""},
		{[]string{"help", "apply"}, 0, "Usage: microvm apply [-f FILE] [--host-only]", ""},
		{[]string{"plan", "--help"}, 0, "", "sudo microvm plan -f infra.toml -v"},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"validate", "-f", example}, 0, "vm4      10.4.0.0/24     gateway 10.4.0.1", ""},
		{[]string{"validate", "-f", "testdata/nope.toml"}, 1, "", "reading config: open testdata/nope.toml"},
		{[]string{"validate", "-f", "../config/testdata/bad/many-errors.toml"}, 1, "", "many-errors.toml:9:1: vm.vm2.subnet 10.1.0.0/24 overlaps"},
		{[]string{"validate", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"apply", "-f", example, "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"-u"}, 2, "", "microvm update: name one or more VMs"},
		{[]string{"destroy", "-f", example, "vm5"}, 2, "", "say so with --data"},
		{[]string{"up", "-f", example}, 2, "", "name one or more VMs"},
		{[]string{"ssh", "-f", example}, 2, "", "name one VM"},
		{[]string{"check", "-f", example}, 2, "", "--target is required"},
		{[]string{"logs", "-f", example, "vm9"}, 1, "", `no VM "vm9"`},
		{[]string{"version"}, 0, "microvm ", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errOut, code := mainOut(tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errOut, tt.err) {
				t.Errorf("got exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit %d, stdout with %q, stderr with %q", code, out, errOut, tt.code, tt.out, tt.err)
			}
		})
	}
}

// TestEveryCommandTeaches: each command's help has an example.
func TestEveryCommandTeaches(t *testing.T) {
	for _, c := range commands() {
		if c.name != "version" && !strings.Contains(c.long, "Examples:") {
			t.Errorf("microvm %s --help has no examples", c.name)
		}
	}
}
