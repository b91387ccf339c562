package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// main runs the CLI in-process, without root, in this namespace: only for
// commands that read nothing from the host.
func mainOut(args ...string) (string, string, int) {
	var out, errw bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errw)
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
		{[]string{"-h"}, 0, "Commands:", ""},
		{[]string{"help", "apply"}, 0, "Usage: microvm apply [-f FILE] [--host-only]", ""},
		{[]string{"help", "image", "build"}, 0, "Usage: microvm image build", ""},
		{[]string{"help", "nosuch"}, 2, "", `unknown command "nosuch"`},
		{[]string{"plan", "--help"}, 0, "sudo microvm plan -f infra.toml -v", ""},
		{[]string{"image", "build", "-h"}, 0, "leaves nothing behind", ""},
		{[]string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"stauts"}, 2, "", `unknown command "stauts" (did you mean "status"?)`},
		{[]string{"image", "biuld"}, 2, "", `microvm image: unknown command "biuld" (did you mean "build"?)`},
		{[]string{"validate", "-f", example}, 0, "vm4      10.4.0.0/24     gateway 10.4.0.1", ""},
		{[]string{"validate", "--file=" + example}, 0, "vm4      10.4.0.0/24", ""},
		{[]string{"-f", example, "validate"}, 0, "vm4      10.4.0.0/24", ""},
		{[]string{"validate", "-f", "testdata/nope.toml"}, 1, "", "reading config: open testdata/nope.toml"},
		{[]string{"validate", "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"validate", "--jsno"}, 2, "", `microvm validate: unknown flag: --jsno (did you mean "json"?)`},
		{[]string{"validate", "-x"}, 2, "", "unknown shorthand flag: 'x' in -x\nRun 'microvm validate --help' for usage.\n"},
		{[]string{"apply", "-f", example, "extra"}, 2, "", `unexpected argument "extra"`},
		{[]string{"-u"}, 2, "", "microvm update: name one or more VMs, or give --all"},
		{[]string{"-Ru"}, 2, "", "microvm update: name one or more VMs"},
		{[]string{"-c", "vm5"}, 2, "", "a VM is a [vm.NAME] table in infra.toml"},
		{[]string{"-r"}, 2, "", "microvm run: name one VM"},
		{[]string{"-l", "--help"}, 0, "Usage: microvm list", ""},
		{[]string{"destroy", "-f", example, "vm5"}, 2, "", "say so with --data"},
		{[]string{"up", "-f", example}, 2, "", "name one or more VMs"},
		{[]string{"up", "--all", "vm1", "-f", example}, 2, "", "name VMs or give --all, not both"},
		{[]string{"ssh", "-f", example}, 2, "", "name one VM"},
		{[]string{"exec", "vm1", "-f", example}, 2, "", "name one VM and the command"},
		{[]string{"check", "-f", example}, 2, "", "--target is required"},
		{[]string{"logs", "--file", example, "vm9"}, 1, "", `no VM "vm9"`},
		{[]string{"logs", "vm9", "--file", example, "-f"}, 1, "", `no VM "vm9"`},
		{[]string{"image", "build", "ubuntu", "-f", example}, 1, "", "no recipe for an image called \"ubuntu\"; image build makes debian"},
		{[]string{"completion"}, 2, "", "name the shell"},
		{[]string{"completion", "bash"}, 0, "__start_microvm", ""},
		{[]string{"completion", "zsh"}, 0, "#compdef microvm", ""},
		{[]string{"completion", "fish"}, 0, "complete -c microvm", ""},
		{[]string{"__complete", "up", "-f", example, ""}, 0, "vm1\nvm2\nvm3\nvm4\n", ""},
		{[]string{"__complete", "image", "build", ""}, 0, "debian\n", ""},
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

// TestFlagsAnywhere: a flag means the same before the name, after it, and
// in either form.
func TestFlagsAnywhere(t *testing.T) {
	want, _, code := mainOut("validate", "--json", "-f", example)
	if code != 0 || !strings.HasPrefix(want, "{") {
		t.Fatalf("validate --json: exit %d, %q", code, want)
	}
	for _, args := range [][]string{
		{"validate", "-f", example, "--json"},
		{"validate", "--file", example, "--json"},
		{"validate", "--file=" + example, "--json"},
		{"-f", example, "validate", "--json"},
	} {
		if got, errOut, code := mainOut(args...); code != 0 || got != want {
			t.Errorf("%v: exit %d, stderr %q; output differs from validate --json -f FILE:\n%s", args, code, errOut, got)
		}
	}
	// ssh's command is after --, where flags are the guest's.
	if _, errOut, _ := mainOut("ssh", "vm1", "ls", "-la", "-f", example); !strings.Contains(errOut, "unknown shorthand flag: 'l'") {
		t.Errorf("ssh vm1 ls -la: %s", errOut)
	}
}

// TestHelpIsHelp: microvm help CMD and CMD --help print the same.
func TestHelpIsHelp(t *testing.T) {
	for _, c := range commands() {
		names := [][]string{{c.name}}
		for _, s := range c.sub {
			names = append(names, []string{c.name, s.name})
		}
		for _, n := range names {
			a, _, _ := mainOut(append([]string{"help"}, n...)...)
			b, _, _ := mainOut(append(n, "--help")...)
			if a != b || a == "" {
				t.Errorf("microvm help %s and %s --help differ:\n%s\n---\n%s", strings.Join(n, " "), strings.Join(n, " "), a, b)
			}
		}
	}
}

// TestEveryCommandTeaches: each command's help has an example.
func TestEveryCommandTeaches(t *testing.T) {
	var all []*command
	for _, c := range commands() {
		all = append(append(all, c), c.sub...)
	}
	for _, c := range all {
		if c.name != "version" && !strings.Contains(c.long, "Examples:") {
			t.Errorf("microvm %s --help has no examples", c.name)
		}
	}
}

// TestErrorLines: every problem of a file that has several is on a line
// of its own that starts with the command, then file:line:col.
func TestErrorLines(t *testing.T) {
	_, errOut, code := mainOut("validate", "-f", "../config/testdata/bad/many-errors.toml")
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 1 || len(lines) < 3 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "microvm validate: ../config/testdata/bad/many-errors.toml:") {
			t.Errorf("a line without the prefix and position: %q", l)
		}
	}
}

// TestLocate: without -f, $MICROVM_CONFIG, then ./infra.toml, then the
// system file; the error names what was tried.
func TestLocate(t *testing.T) {
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	system := filepath.Join(dir, "etc", "infra.toml")
	env := filepath.Join(dir, "env.toml")
	local := filepath.Join(dir, "cwd")
	os.MkdirAll(filepath.Dir(system), 0o755)
	os.MkdirAll(local, 0o755)
	// Each file has a VM of its own name, so the output says which was read.
	for path, vm := range map[string]string{system: "sys", env: "env", filepath.Join(local, "infra.toml"): "local"} {
		body := strings.Replace(string(src), "[vm.vm4]", "[vm."+vm+"]", 1)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := config.SystemFile
	config.SystemFile = system
	defer func() { config.SystemFile = old }()
	t.Chdir(local)
	read := func() string {
		t.Helper()
		out, errOut, _ := mainOut("validate")
		return out + errOut
	}
	steps := []struct {
		name, env string
		remove    string
		want      string
	}{
		{"the flag's file first", "", "", ""},
		{"$MICROVM_CONFIG", env, "", "env "},
		{"./infra.toml", "", "", "local "},
		{"the system file", "", filepath.Join(local, "infra.toml"), "sys "},
		{"none", "", system, "neither ./infra.toml nor " + system + " exists"},
		{"a missing $MICROVM_CONFIG", filepath.Join(dir, "nope.toml"), "", "open " + filepath.Join(dir, "nope.toml")},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			t.Setenv(config.EnvFile, s.env)
			if s.remove != "" {
				os.Remove(s.remove)
			}
			if s.want == "" {
				out, _, code := mainOut("validate", "-f", env)
				if code != 0 || !strings.Contains(out, "env ") {
					t.Errorf("-f: exit %d, %s", code, out)
				}
				return
			}
			if got := read(); !strings.Contains(got, s.want) {
				t.Errorf("got:\n%s\nwant %q", got, s.want)
			}
		})
	}
}
