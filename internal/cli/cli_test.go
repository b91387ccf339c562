package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
		{[]string{"validate", "--jsno"}, 2, "", `microvm validate: unknown flag: --jsno (did you mean "--json"?)`},
		{[]string{"status", "--jsn"}, 2, "", `microvm status: unknown flag: --jsn (did you mean "--json"?)`},
		{[]string{"logs", "--n", "5", "vm1"}, 2, "", `microvm logs: unknown flag: --n (did you mean "-n"?)`},
		{[]string{"logs", "--q", "vm1"}, 2, "", "microvm logs: unknown flag: --q\n"}, // not "-f"
		{[]string{"image", "list", "--flie", "x"}, 2, "", `microvm image list: unknown flag: --flie (did you mean "--file"?)`},
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
		{[]string{"__complete", "--wait", "-f", example, "up", ""}, 0, "vm1\nvm2\nvm3\nvm4\n", ""},
		{[]string{"__completeNoDesc", "--wait", "-f", example, "up", ""}, 0, "vm1\nvm2\nvm3\nvm4\n", ""},
		// After --, a command's name is an argument, even the first.
		{[]string{"--", "version"}, 2, "", `microvm: unknown command "version"`},
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

// TestFlagsBeforeCommand: microvm FLAGS CMD ARGS does what microvm CMD
// FLAGS ARGS does, whether CMD takes the flags or not.
func TestFlagsBeforeCommand(t *testing.T) {
	tests := []struct {
		before, after []string
		code          int
		want          string // on stdout or stderr
	}{
		{[]string{"--json", "-f", example, "validate"}, []string{"validate", "--json", "-f", example}, 0, `"version"`},
		{[]string{"--json", "validate", "-f", example}, []string{"validate", "--json", "-f", example}, 0, `"version"`},
		{[]string{"--file=" + example, "--json", "validate"}, []string{"validate", "--file=" + example, "--json"}, 0, `"version"`},
		// A flag's value that is a command's name is the value.
		{[]string{"-f", "validate", "validate"}, []string{"validate", "-f", "validate"}, 1, "microvm validate: reading config: open validate"},
		{[]string{"--jsn", "status"}, []string{"status", "--jsn"}, 2, `microvm status: unknown flag: --jsn (did you mean "--json"?)`},
		{[]string{"--follow", "validate"}, []string{"validate", "--follow"}, 2, "microvm validate: unknown flag: --follow\n"},
		{[]string{"-q", "list"}, []string{"list", "-q"}, 2, "microvm list: unknown shorthand flag: 'q' in -q"},
		// Shorthands together, with the value in the same word or the next.
		{[]string{"-fn5", "logs", "--file", example, "vm9"}, []string{"logs", "-fn5", "--file", example, "vm9"}, 1, `microvm logs: no VM "vm9"`},
		{[]string{"-fn", "5", "logs", "--file", example, "vm9"}, []string{"logs", "-fn", "5", "--file", example, "vm9"}, 1, `microvm logs: no VM "vm9"`},
		{[]string{"-n", "abc", "logs", "vm1"}, []string{"logs", "-n", "abc", "vm1"}, 2, `microvm logs: -n/--lines "abc"`},
		{[]string{"--timeout", "-1s", "down", "vm1"}, []string{"down", "--timeout", "-1s", "vm1"}, 2, `microvm down: --timeout "-1s"`},
		// At each level: the flags of image build before image, or before build.
		{[]string{"-f", example, "image", "build", "ubuntu"}, []string{"image", "build", "ubuntu", "-f", example}, 1, `no recipe for an image called "ubuntu"`},
		{[]string{"image", "-f", example, "build", "ubuntu"}, []string{"image", "build", "ubuntu", "-f", example}, 1, `no recipe for an image called "ubuntu"`},
		{[]string{"--jsn", "image", "list"}, []string{"image", "list", "--jsn"}, 2, `microvm image list: unknown flag: --jsn (did you mean "--json"?)`},
		{[]string{"image", "--jsn", "list"}, []string{"image", "list", "--jsn"}, 2, `microvm image list: unknown flag: --jsn (did you mean "--json"?)`},
		{[]string{"-h", "image", "list"}, []string{"image", "list", "-h"}, 0, "Usage: microvm image list"},
		{[]string{"--json", "help", "status"}, []string{"help", "--json", "status"}, 2, "microvm help: unknown flag: --json"},
		// No command after the flags: the root's error, as before.
		{[]string{"--json"}, []string{"--json"}, 2, "microvm: unknown flag: --json"},
		{[]string{"--json", "nosuch"}, []string{"--json", "nosuch"}, 2, "microvm: unknown flag: --json"},
		// After --, a command's name is an argument.
		{[]string{"-f", example, "ssh", "vm1", "--", "-f", "status"}, []string{"ssh", "vm1", "-f", example, "--", "-f", "status"}, 1, "microvm ssh: "},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.before, " "), func(t *testing.T) {
			out, errOut, code := mainOut(tt.before...)
			wantOut, wantErr, wantCode := mainOut(tt.after...)
			if out != wantOut || errOut != wantErr || code != wantCode {
				t.Errorf("got exit %d\nstdout:\n%s\nstderr:\n%s\nwant as %q: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut, tt.after, wantCode, wantOut, wantErr)
			}
			if code != tt.code || !strings.Contains(out+errOut, tt.want) {
				t.Errorf("got exit %d, %s%s; want exit %d with %q", code, out, errOut, tt.code, tt.want)
			}
		})
	}
}

// TestFlagValues: a value a flag does not take is a usage error that names
// the flag, what was given and what it wants, for every flag of every
// command.
func TestFlagValues(t *testing.T) {
	tests := []struct {
		args []string
		want string // all of stderr
	}{
		{[]string{"logs", "-n", "abc", "vm1"}, `microvm logs: -n/--lines "abc": want a whole number (0 or more), e.g. -n 50`},
		{[]string{"logs", "--lines=-5", "vm1"}, `microvm logs: -n/--lines "-5": want a whole number (0 or more), e.g. -n 50`},
		{[]string{"ssh", "--wait", "10", "vm1"}, `microvm ssh: --wait "10": want a duration with its unit, e.g. --wait 10s`},
		{[]string{"check", "--wait", "soon"}, `microvm check: --wait "soon": want a duration (0 or more) with its unit, e.g. --wait 30s, 2m or 1h30m`},
		{[]string{"down", "--timeout", "-1s", "vm1"}, `microvm down: --timeout "-1s": want a duration (0 or more) with its unit, e.g. --timeout 30s, 2m or 1h30m`},
		{[]string{"up", "--all=maybe"}, `microvm up: --all "maybe": want true or false, e.g. --all=false`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, errOut, code := mainOut(tt.args...)
			if want := tt.want + "\nRun 'microvm " + tt.args[0] + " --help' for usage.\n"; code != 2 || errOut != want {
				t.Errorf("got exit %d, stderr:\n%s\nwant exit 2, stderr:\n%s", code, errOut, want)
			}
		})
	}
	// Every flag that can get a bad value says what it wants.
	seen := map[string]bool{} // the types checked
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Value.Set("abc") == nil {
				return // any word will do (a name, a path)
			}
			seen[f.Value.Type()] = true
			path := strings.Fields(c.CommandPath())[1:]
			_, errOut, code := mainOut(append(path, "--"+f.Name+"=abc")...)
			if code != 2 || !strings.Contains(errOut, `--`+f.Name+` "abc": want `) {
				t.Errorf("microvm %s --%s=abc: exit %d, %s", strings.Join(path, " "), f.Name, code, errOut)
			}
		})
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	var out bytes.Buffer
	walk(tree(strings.NewReader(""), &out, &out))
	if !seen["int"] || !seen["duration"] || !seen["bool"] {
		t.Errorf("checked flags of types %v, want int, duration and bool among them", seen)
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
