package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

func execCmd() *command {
	var wait time.Duration
	return &command{
		name:  "exec",
		args:  "[-f FILE] [--wait DURATION] NAME -- COMMAND [ARG...]",
		short: "run a command in a VM, its arguments as given (incus exec)",
		long: `
Runs COMMAND with its arguments in the VM as root, as incus exec does: each
argument reaches the guest as one argument, quoted for its shell, where
microvm ssh NAME -- ... hands the guest's shell one line to split. Its
output and exit status are the command's; standard input is passed on.
Like ssh, it logs in with the host's admin key, which needs root.

Examples:
  sudo microvm exec vm1 -- uname -a
  sudo microvm exec vm1 -- sh -c 'echo "$HOSTNAME" > /var/tmp/name'
  sudo microvm exec --wait 2m vm2 -- systemctl is-system-running --wait`,
		flags: func(fs *pflag.FlagSet) {
			fs.DurationVar(&wait, "wait", 5*time.Second, "how long to keep trying to log in")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("%w: name one VM and the command, e.g. microvm exec vm1 -- uname -a", errUsage)
			}
			return inGuest(e, args[0], shellQuote(args[1:]), wait)
		},
	}
}

// shellQuote joins args into one line a POSIX shell splits back into args.
func shellQuote(args []string) string {
	var out []string
	for _, a := range args {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			out = append(out, a)
			continue
		}
		out = append(out, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	return strings.Join(out, " ")
}
