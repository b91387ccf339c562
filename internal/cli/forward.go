package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
)

// elsewhere is the answer of namedVMs on a fleet host for VMs that are
// not in its part: Main runs the same command on the host they run on,
// so that status, logs, ssh, up and down reach a VM from any host.
type elsewhere struct {
	in    *config.Infra
	names []string // the VMs named; some may be here
	first string   // the first one not here
}

func (e *elsewhere) Error() string {
	return fmt.Sprintf("no VM %q on this host, %s", e.first, e.in.Part.Host)
}

// envForwarded marks a command another host ran here: it is not sent on.
const envForwarded = "MICROVM_FORWARDED"

// forward runs args on the host the VMs of away run on, over ssh as the
// user who typed it ($MICROVM_FLEET_SSH), with the same streams, and
// returns its exit status.
func forward(away *elsewhere, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "microvm: %v\n", err)
		return 1
	}
	if os.Getenv(envForwarded) != "" {
		return fail(fmt.Errorf("%v (this command came from another host of the fleet, whose view of where VMs run is newer: run it again there)", away))
	}
	cli, err := partClient(away.in)
	if err != nil {
		return fail(fmt.Errorf("%v, and the fleet cannot say where it runs: %w", away, err))
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := fleet.Load(ctx, cli)
	if err != nil {
		return fail(fmt.Errorf("%v, and the fleet cannot say where it runs: %w", away, err))
	}
	in, err := st.Model()
	if err != nil {
		return fail(err)
	}
	hosts := map[string][]string{}
	for _, n := range away.names {
		h, ok := st.Placement[n]
		if !ok {
			return fail(fmt.Errorf("no VM %q in the fleet (microvm fleet status lists them)", n))
		}
		hosts[h] = append(hosts[h], n)
	}
	if len(hosts) > 1 {
		var where []string
		for _, h := range slices.Sorted(maps.Keys(hosts)) {
			where = append(where, strings.Join(hosts[h], ", ")+" on "+h)
		}
		return fail(fmt.Errorf("the VMs named run on different hosts (%s); name the VMs of one host at a time", strings.Join(where, "; ")))
	}
	var host string
	for h := range hosts {
		host = h
	}
	fh, ok := in.FleetHost(host)
	if !ok || host == away.in.Part.Host {
		return fail(fmt.Errorf("%v: the fleet places it here; this host's part is not applied yet (microvm fleet status)", away))
	}
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	ssh := sshCommand()
	argv := append([]string{}, ssh[1:]...)
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		argv = append(argv, "-t")
	}
	remote := envForwarded + "=1 " + shellQuote(append([]string{self}, withoutFile(args)...))
	argv = append(argv, "root@"+fh.Address, remote)
	cmd := exec.Command(ssh[0], argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode()
	case err != nil:
		return fail(fmt.Errorf("reaching %s (%s) over ssh: %w", host, fh.Address, err))
	}
	return 0
}

// withoutFile drops -f/--file: the other host reads its own part.
func withoutFile(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-f" || a == "--file":
			i++
		case strings.HasPrefix(a, "--file=") || strings.HasPrefix(a, "-f") && len(a) > 2 && !strings.HasPrefix(a, "--"):
		default:
			out = append(out, a)
		}
	}
	return out
}

// away returns the elsewhere error for names on a fleet host, or nil.
func away(in *config.Infra, names []string, missing string) error {
	if in.Part.Host == "" || slices.Contains(in.Part.VMs, missing) {
		return nil
	}
	return &elsewhere{in: in, names: names, first: missing}
}

// envSSH is the ssh command the admin's commands reach hosts with.
const envSSH = "MICROVM_FLEET_SSH"

// sshCommand is $MICROVM_FLEET_SSH split into words, or plain ssh that
// never asks for a password.
func sshCommand() []string {
	if s := strings.Fields(os.Getenv(envSSH)); len(s) > 0 {
		return s
	}
	return []string{"ssh", "-o", "BatchMode=yes"}
}
