// Package cli is the microvm command tree. Each subcommand lives in its own
// file as a command value; Main turns them into cobra commands (flags
// anywhere, GNU --long and -s flags, generated shell completion) and runs
// one, so tests drive the real CLI in-process.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// command is one subcommand.
type command struct {
	name    string
	aliases []string
	args    string // synopsis after the name, e.g. "[-f FILE] [--host-only]"
	short   string // one line for the command list
	long    string // what it does, with examples
	// flags registers the command's flags; run gets the rest of the args.
	flags func(fs *pflag.FlagSet)
	run   func(e *env, args []string) error
	// complete lists what the positional arguments can be, for shell
	// completion (VM names, mostly); nil completes nothing.
	complete func(e *env, args []string) []string
	sub      []*command // subcommands (image build, snapshot rm, ...)
	noFile   bool       // reads no infra.toml, so has no --file
}

// env is what a running command has: its output streams and the file
// -f/--file names (or the one config.Locate finds).
type env struct {
	stdin          io.Reader // what console, ssh and exec pass on; where confirmations are read
	stdout, stderr io.Writer
	fileFlag       string // -f/--file as given; "" if not
	file           string // the file read, once load has found it
}

// load finds infra.toml (config.Locate), reads and validates it, and
// checks that every VM's hypervisor can run it (vmm.Check).
func (e *env) load() (*config.Infra, error) {
	path, err := config.Locate(e.fileFlag)
	if err != nil {
		return nil, err
	}
	e.file = path
	in, err := config.Load(path)
	if err != nil {
		return in, err
	}
	if err := vmm.Check(in); err != nil {
		return nil, err
	}
	return in, nil
}

func commands() []*command {
	return []*command{validateCmd(), planCmd(), applyCmd(), teardownCmd(),
		upCmd(), downCmd(), restartCmd(), updateCmd(), destroyCmd(), statusCmd("status"), statusCmd("list"), infoCmd(), topCmd(),
		logsCmd(), consoleCmd(), sshCmd(), execCmd(), checkCmd(),
		runCmd(), keepCmd(), hostCmd(), fleetCmd(), moveCmd(), imageCmd(), secretCmd(), snapshotCmd(), snapshotsCmd(), rollbackCmd(), demoCmd(), completionCmd(), versionCmd()}
}

// errUsage marks a mistake on the command line (exit status 2).
var errUsage = errors.New("usage")

// Main runs the command line args (without the program name) with the
// given standard streams, and returns the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	args, err := seedArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "microvm: %s\n", err)
		return 2
	}
	root := tree(stdin, stdout, stderr)
	if len(args) > 1 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		// Completion: the last word is the one being typed.
		last := len(args) - 1
		args = append(append([]string{args[0]}, commandFirst(root, args[1:last])...), args[last])
	} else {
		args = commandFirst(root, args)
	}
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	if away := (*elsewhere)(nil); errors.As(err, &away) {
		return forward(away, args, stdin, stdout, stderr)
	}
	name := strings.TrimSpace(strings.TrimPrefix(cmd.CommandPath(), "microvm"))
	prefix := "microvm " + name + ": "
	if name == "" {
		prefix = "microvm: "
	}
	if errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "%s%s\n", prefix, strings.TrimPrefix(err.Error(), "usage: "))
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return 2
	}
	printError(stderr, prefix, err)
	return 1
}

// printError writes err after prefix. A report of several problems (in
// infra.toml, or what plan found) gets the prefix on each of them, so that
// every problem starts the same way and an editor can jump to each
// file:line:col.
func printError(w io.Writer, prefix string, err error) {
	var list config.ErrorList
	if errors.As(err, &list) && err.Error() == list.Error() {
		for _, e := range list {
			fmt.Fprintf(w, "%s%s\n", prefix, e)
		}
		return
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			printError(w, prefix, e)
		}
		return
	}
	fmt.Fprintf(w, "%s%s\n", prefix, err)
}

// seedArgs maps microvm.nix's one-letter actions to commands: -u NAME...
// is update (here it restarts what changed, as microvm.nix's -Ru does),
// -R (restart after update) is what update always does, -r NAME is run,
// -l is list. -c NAME has no equivalent: a VM is a table in infra.toml.
func seedArgs(args []string) ([]string, error) {
	if len(args) == 0 {
		return args, nil
	}
	switch args[0] {
	case "-u", "-Ru", "-uR":
		return append([]string{"update"}, args[1:]...), nil
	case "-R":
		if len(args) > 1 && args[1] == "-u" {
			return append([]string{"update"}, args[2:]...), nil
		}
		return append([]string{"update"}, args[1:]...), nil
	case "-r":
		return append([]string{"run"}, args[1:]...), nil
	case "-l":
		return append([]string{"list"}, args[1:]...), nil
	case "-c":
		return nil, fmt.Errorf("there is no -c here: a VM is a [vm.NAME] table in infra.toml; add one, then run microvm apply")
	}
	return args, nil
}

// tree builds the cobra command tree of commands().
func tree(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	cobra.EnableCommandSorting = false
	root := &cobra.Command{
		Use:           "microvm",
		Short:         "turn a Linux host into a small microVM hypervisor, from one declarative file",
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a command: the overview, and a usage error.
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			overview(stdout, cmd)
			return exitStatus(2)
		},
		Args: cobra.ArbitraryArgs,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) { help(cmd.OutOrStdout(), cmd) })
	root.SetFlagErrorFunc(flagError)
	root.CompletionOptions.DisableDefaultCmd = true
	for _, c := range commands() {
		root.AddCommand(c.cobra(stdin, stdout, stderr))
	}
	root.SetHelpCommand(helpCmd(root))
	// Added now rather than when it runs, so that commandFirst finds it:
	// microvm --json help status is help's unknown flag.
	root.InitDefaultHelpCmd()
	// -h/--help on every command now, so that `help CMD` lists it too.
	var helpFlags func(*cobra.Command)
	helpFlags = func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		for _, s := range c.Commands() {
			helpFlags(s)
		}
	}
	helpFlags(root)
	return root
}

// cobra turns c into a cobra command whose run gets a fresh env.
func (c *command) cobra(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	cc := &cobra.Command{
		Use:     strings.TrimSpace(c.name + " " + c.args),
		Aliases: c.aliases,
		Short:   c.short,
		Long:    strings.TrimSpace(c.long),
		Args:    cobra.ArbitraryArgs,
	}
	if c.run != nil {
		cc.RunE = func(cmd *cobra.Command, args []string) error {
			if err := notNegative(cmd.Flags()); err != nil {
				return err
			}
			return c.run(e, args)
		}
	} else {
		// A command that only groups others (image): an unknown
		// subcommand is a usage error, none is the help.
		cc.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			help(stdout, cmd)
			return exitStatus(2)
		}
	}
	fs := cc.Flags()
	fs.SortFlags = false
	if c.flags != nil {
		c.flags(fs)
	}
	if !c.noFile {
		// -f is --file everywhere but in logs, where it is --follow
		// (journalctl's habit).
		short := "f"
		if fs.ShorthandLookup("f") != nil {
			short = ""
		}
		fs.StringVarP(&e.fileFlag, "file", short, "", "read infra.toml from `FILE` (default: $"+config.EnvFile+", else ./infra.toml, else "+config.SystemFile+")")
		// It fails only for a flag that is missing or already has one: not this one.
		_ = cc.RegisterFlagCompletionFunc("file", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"toml"}, cobra.ShellCompDirectiveFilterFileExt
		})
	}
	if c.complete != nil {
		cc.ValidArgsFunction = func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			return c.complete(e, args), cobra.ShellCompDirectiveNoFileComp
		}
	}
	for _, s := range c.sub {
		sc := s.cobra(stdin, stdout, stderr)
		// A subcommand reads the file its parent was given too:
		// microvm image -f FILE list.
		cc.AddCommand(sc)
	}
	return cc
}

// commandFirst moves the flags given before a command's name to after it,
// at each level of the tree: microvm --json status is microvm status
// --json, and microvm --jsn status is status's unknown flag. Cobra finds
// the command by skipping what looks like flags, with the flags of the
// command it is in, the root, which has none of them: it takes any flag
// for one with a value, so -f FILE status worked and --json status took
// "status" for the value of --json. Here each name in args is tried as the
// command: it is the one if what comes before it are its flags and their
// values (see onlyFlags); after --, names are arguments. There are no
// persistent flags: each command declares all of its own.
func commandFirst(cmd *cobra.Command, args []string) []string {
	p := 0 // where the next command's name or its flags start
	for p < len(args) && cmd.HasSubCommands() && args[p] != "--" {
		if !strings.HasPrefix(args[p], "-") || args[p] == "-" {
			// A name first: cobra finds it (or says it is unknown).
			sub := subcommand(cmd, args[p])
			if sub == nil {
				return args
			}
			cmd, p = sub, p+1
			continue
		}
		var sub *cobra.Command
		i := p + 1
		for ; i < len(args) && args[i] != "--" && sub == nil; i++ {
			if s := subcommand(cmd, args[i]); s != nil && onlyFlags(s.Flags(), args[p:i]) {
				sub = s
			}
		}
		if sub == nil {
			return args
		}
		i-- // the name's index
		moved := append([]string{}, args[:p]...)
		moved = append(moved, args[i])
		moved = append(moved, args[p:i]...)
		args = append(moved, args[i+1:]...)
		cmd, p = sub, p+1
	}
	return args
}

// subcommand is cmd's subcommand called name (or one of its aliases), or nil.
func subcommand(cmd *cobra.Command, name string) *cobra.Command {
	for _, s := range cmd.Commands() {
		if s.Name() == name || s.HasAlias(name) {
			return s
		}
	}
	return nil
}

// onlyFlags reports whether args are only flags of fs and their values, as
// pflag reads them. A flag fs does not have counts as one without a value,
// so that the command says it does not take it.
func onlyFlags(fs *pflag.FlagSet, args []string) bool {
	for i := 0; i < len(args); i++ {
		a := args[i]
		takesNext := false
		switch {
		case a == "-" || !strings.HasPrefix(a, "-"):
			return false // an argument
		case strings.HasPrefix(a, "--"):
			f := fs.Lookup(a[2:])
			takesNext = f != nil && f.NoOptDefVal == ""
		default:
			// -abc are shorthands; the first that takes a value takes
			// the rest of the word, or the next one.
			for j := 1; j < len(a) && a[j] != '='; j++ {
				if f := fs.ShorthandLookup(a[j : j+1]); f != nil && f.NoOptDefVal == "" {
					takesNext = j == len(a)-1
					break
				}
			}
		}
		if takesNext {
			if i++; i == len(args) {
				return false // its value would be the command's name
			}
		}
	}
	return true
}

// flagError makes pflag's errors usage errors: a bad value says what the
// flag takes, a misspelt flag gets a suggestion written as a flag.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	var bad *pflag.InvalidValueError
	if errors.As(err, &bad) {
		if err := badValue(bad.GetFlag(), bad.GetValue()); err != nil {
			return err
		}
	}
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		// --n is -n; any other one letter is near every short flag, so
		// only the long names are suggested.
		if len(name) == 1 && cmd.Flags().ShorthandLookup(name) != nil {
			return fmt.Errorf("%w: %s (did you mean %q?)", errUsage, msg, "-"+name)
		}
		var known []string
		cmd.Flags().VisitAll(func(f *pflag.Flag) { known = append(known, "--"+f.Name) })
		msg += config.Suggest("--"+name, known)
	}
	return fmt.Errorf("%w: %s", errUsage, msg)
}

// badValue is the usage error for a value flag f does not take: which flag,
// what was given and what it wants, e.g. -n/--lines "abc": want a whole
// number (0 or more), e.g. -n 50. It is nil for a flag of a type it does
// not know (TestFlagValues checks there is none).
func badValue(f *pflag.Flag, value string) error {
	name, use := "--"+f.Name, "--"+f.Name
	if f.Shorthand != "" {
		name, use = "-"+f.Shorthand+"/"+name, "-"+f.Shorthand
	}
	var want string
	switch f.Value.Type() {
	case "int", "int64":
		want = "a whole number (0 or more), e.g. " + use + " 50"
	case "duration":
		want = "a duration (0 or more) with its unit, e.g. " + use + " 30s, 2m or 1h30m"
		if n, err := strconv.ParseFloat(value, 64); err == nil && n > 0 {
			want = "a duration with its unit, e.g. " + use + " " + value + "s"
		}
	case "bool":
		want = "true or false, e.g. --" + f.Name + "=false"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s %q: want %s", errUsage, name, value, want)
}

// notNegative rejects a negative number or duration given to a flag: none
// has a use for one (a negative --wait would give up at once).
func notNegative(fs *pflag.FlagSet) error {
	var err error
	fs.Visit(func(f *pflag.Flag) {
		if t := f.Value.Type(); err == nil && (t == "int" || t == "int64" || t == "duration") && strings.HasPrefix(f.Value.String(), "-") {
			err = badValue(f, f.Value.String())
		}
	})
	return err
}

// unknownCommand is the error for a command that does not exist, with the
// nearest ones.
func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	cmd.SuggestionsMinimumDistance = 2
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return fmt.Errorf("%w: %s", errUsage, msg)
}

// helpCmd is `microvm help [COMMAND...]`: the same text as COMMAND --help.
func helpCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "show the help of microvm or of a command (the same as COMMAND --help)",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 {
				name := strings.Join(args, " ")
				if len(rest) > 0 {
					name = rest[0]
				}
				return unknownCommand(root, name)
			}
			help(root.OutOrStdout(), target)
			return nil
		},
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			var names []string
			for _, c := range root.Commands() {
				if !c.Hidden {
					names = append(names, c.Name())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// overview is the root's help: what the program is, its commands, and
// where to start.
func overview(w io.Writer, root *cobra.Command) {
	fmt.Fprint(w, `microvm turns a Linux host into a small microVM hypervisor, from one
declarative file, infra.toml.

Usage: microvm COMMAND [ARGS] [flags]

Commands:
`)
	for _, c := range root.Commands() {
		if !c.Hidden {
			fmt.Fprintf(w, "  %-11s %s\n", c.Name(), c.Short)
		}
	}
	fmt.Fprintf(w, `
Start here:
  sudo microvm demo                    the 4-VM setup in a throwaway sandbox
  microvm validate -f infra.toml       check a file
  sudo microvm plan                    what apply would change
  sudo microvm apply                   the host part, then the VMs
  sudo microvm status                  every VM, as a table
  sudo microvm ssh vm1                 log in to a VM

Every command but demo reads infra.toml: the file -f/--file names, else
$%s, else ./infra.toml if there is one, else %s.
microvm.nix's -u NAME (update), -r NAME (run) and -l (list) work too.
Flags go anywhere, before or after the command. Run "microvm help COMMAND" or
"microvm COMMAND --help" for details.
`, config.EnvFile, config.SystemFile)
}

// help writes a command's help: usage, what it does, its subcommands and
// its flags.
func help(w io.Writer, c *cobra.Command) {
	if !c.HasParent() {
		overview(w, c)
		return
	}
	fmt.Fprintf(w, "Usage: %s\n", strings.TrimSpace(c.Parent().CommandPath()+" "+c.Use))
	if len(c.Aliases) > 0 {
		fmt.Fprintf(w, "Also: %s\n", strings.Join(c.Aliases, ", "))
	}
	long := c.Long
	if long == "" {
		long = c.Short
	}
	fmt.Fprintf(w, "\n%s\n", long)
	if c.HasAvailableSubCommands() {
		fmt.Fprintln(w, "\nCommands:")
		for _, s := range c.Commands() {
			if !s.Hidden {
				fmt.Fprintf(w, "  %-11s %s\n", s.Name(), s.Short)
			}
		}
	}
	if c.HasAvailableFlags() || c.HasAvailableLocalFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", c.LocalFlags().FlagUsagesWrapped(100))
	}
}

// needRoot explains why a command needs root before the kernel refuses:
// what says what the command does with it.
func needRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s, which needs root; run it with sudo", what)
	}
	return nil
}

// What needRoot says for the commands that change the host.
const changesHost = "this command reads and changes the host's network and firewall"

// noArgs rejects stray arguments.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, args[0])
	}
	return nil
}
