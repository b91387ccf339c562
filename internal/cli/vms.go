package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// What the lifecycle commands (up, down, restart, update, status, apply)
// share: finding the named VMs, the manager that starts and stops their
// supervisors (systemd, or detached keepers), and the lock. Package
// lifecycle starts and stops them and reads their state.

// manager returns how VMs are kept running on this host.
func (e *env) manager() (supervise.Manager, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return supervise.For(bin, e.file)
}

// namedVMs returns the VMs called names, all of them if names is empty and
// all is true.
func namedVMs(in *config.Infra, names []string, all bool) ([]*config.VM, error) {
	if len(names) == 0 {
		if !all {
			return nil, fmt.Errorf("%w: name one or more VMs", errUsage)
		}
		var out []*config.VM
		for i := range in.VMs {
			out = append(out, &in.VMs[i])
		}
		return out, nil
	}
	var out []*config.VM
	for _, n := range names {
		vm, ok := in.VM(n)
		if !ok {
			if err := away(in, names, n); err != nil {
				return nil, err
			}
			var have []string
			for _, v := range in.VMs {
				have = append(have, v.Name)
			}
			return nil, fmt.Errorf("no VM %q in %s (it has %s)", n, in.File, strings.Join(have, ", "))
		}
		out = append(out, vm)
	}
	return out, nil
}

// lifecycle loads the file and takes the lock, for commands that start or
// stop VMs. The caller releases the lock.
func (e *env) lifecycle() (*config.Infra, supervise.Manager, *supervise.Lock, error) {
	in, err := e.load()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := notWholeFleet(in); err != nil {
		return nil, nil, nil, err
	}
	if os.Geteuid() != 0 {
		return nil, nil, nil, fmt.Errorf("starting and stopping VMs needs root (their network, mounts and VMM user); run it with sudo")
	}
	m, err := e.manager()
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := supervise.TakeLock(in.Host)
	if err != nil {
		return nil, nil, nil, err
	}
	return in, m, l, nil
}

// oneVM reads the file and finds the one VM named in args.
func (e *env) oneVM(args []string) (*config.Infra, *config.VM, error) {
	if len(args) != 1 {
		return nil, nil, fmt.Errorf("%w: name one VM", errUsage)
	}
	in, err := e.load()
	if err != nil {
		return nil, nil, err
	}
	vms, err := namedVMs(in, args, false)
	if err != nil {
		return nil, nil, err
	}
	return in, vms[0], nil
}

// lifecycleOf is lifecycle for the VMs named in args (one at least), or
// with all for every VM of the file, for up, down, restart and update. The
// caller releases the lock.
func (e *env) lifecycleOf(args []string, all bool) (*config.Infra, supervise.Manager, []*config.VM, *supervise.Lock, error) {
	switch {
	case all && len(args) > 0:
		return nil, nil, nil, nil, fmt.Errorf("%w: name VMs or give --all, not both", errUsage)
	case !all && len(args) == 0:
		return nil, nil, nil, nil, fmt.Errorf("%w: name one or more VMs, or give --all", errUsage)
	}
	in, m, lock, err := e.lifecycle()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	vms, err := namedVMs(in, args, all)
	if err != nil {
		lock.Release()
		return nil, nil, nil, nil, err
	}
	return in, m, vms, lock, nil
}

// uptime prints a duration for a person: 45s, 12m, 3h04m, 2d05h.
func uptime(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }

// confirm asks question, which ends "Type yes to ...: ", and reports
// whether the answer read from stdin is yes. No answer (EOF) is no.
func confirm(stdin io.Reader, w io.Writer, question string) (bool, error) {
	fmt.Fprint(w, question)
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(w)
		if err == io.EOF {
			return false, nil
		}
		return false, fmt.Errorf("reading the answer: %w", err)
	}
	answer := strings.ToLower(strings.TrimSpace(line))
	return answer == "yes" || answer == "y", nil
}
