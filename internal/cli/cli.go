// Package cli is the microvm command tree. Each subcommand lives in its own
// file; Main runs one of them, so tests drive the real CLI in-process.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// command is one subcommand.
type command struct {
	name  string
	args  string // synopsis after the name, e.g. "[-f FILE] [--host-only]"
	short string // one line for the command list
	long  string // what it does, with examples
	// flags registers the command's flags; run gets the rest of the args.
	flags func(fs *flag.FlagSet)
	run   func(e *env, args []string) error
}

// env is what a running command has: its output streams and the -f file.
type env struct {
	stdout, stderr io.Writer
	file           string
}

// load reads and validates the file named by -f.
func (e *env) load() (*config.Infra, error) {
	return config.Load(e.file)
}

func commands() []*command {
	return []*command{validateCmd(), planCmd(), applyCmd(),
		upCmd(), downCmd(), restartCmd(), updateCmd(), destroyCmd(), statusCmd("status"), statusCmd("list"), logsCmd(), consoleCmd(), sshCmd(), checkCmd(),
		runCmd(), keepCmd(), hostCmd(), imageCmd(), snapshotCmd(), snapshotsCmd(), rollbackCmd(), demoCmd(), versionCmd()}
}

// errUsage marks a mistake on the command line (exit status 2).
var errUsage = errors.New("usage")

// Main runs the command line args (without the program name) and returns
// the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	// The seed writes "microvm -u vm1"; it is update.
	if len(args) > 0 && args[0] == "-u" {
		args = append([]string{"update"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if c := find(cmds, args[1]); c != nil {
				usage(stdout, c)()
				return 0
			}
		}
		overview(stdout, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c := find(cmds, args[0])
	if c == nil {
		fmt.Fprintf(stderr, "microvm: unknown command %q\n\n", args[0])
		overview(stderr, cmds)
		return 2
	}
	e := &env{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("microvm "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usage(stderr, c)
	fs.StringVar(&e.file, "f", "infra.toml", "the infra.toml to read")
	if c.flags != nil {
		c.flags(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := c.run(e, fs.Args()); err != nil {
		var st exitStatus
		if errors.As(err, &st) {
			return int(st)
		}
		if errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "microvm %s: %s\n", c.name, strings.TrimPrefix(err.Error(), "usage: "))
			fs.Usage()
			return 2
		}
		fmt.Fprintf(stderr, "microvm %s: %s\n", c.name, err)
		return 1
	}
	return 0
}

func find(cmds []*command, name string) *command {
	for _, c := range cmds {
		if c.name == name {
			return c
		}
	}
	return nil
}

func overview(w io.Writer, cmds []*command) {
	fmt.Fprint(w, `microvm turns a Linux host into a small microVM hypervisor, from one
declarative file, infra.toml.

Usage: microvm COMMAND [flags]

Commands:
`)
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.short)
	}
	fmt.Fprint(w, `
Start here:
  sudo microvm demo                    the 4-VM setup in a throwaway sandbox
  microvm validate -f infra.toml       check a file
  sudo microvm plan -f infra.toml      what apply would change
  sudo microvm apply -f infra.toml      the host part, then the VMs
  sudo microvm status                  every VM, as a table
  sudo microvm ssh vm1                 log in to a VM

Run "microvm help COMMAND" or "microvm COMMAND --help" for details.
`)
}

func usage(w io.Writer, c *command) func() {
	return func() {
		fmt.Fprintf(w, "Usage: microvm %s %s\n\n%s\n", c.name, c.args, strings.TrimSpace(c.long))
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		fs.String("f", "infra.toml", "the infra.toml to read")
		if c.flags != nil {
			c.flags(fs)
		}
		fmt.Fprintln(w, "\nFlags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// needRoot explains why a command needs root before the kernel refuses.
func needRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("this command reads and changes the host's network and firewall, which needs root; run it with sudo")
	}
	return nil
}

// noArgs rejects stray arguments.
func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, args[0])
	}
	return nil
}
