package cli

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func runCmd() *command {
	return &command{
		name:  "run",
		args:  "[-f FILE] NAME",
		short: "run one VM in the foreground (what its systemd unit runs)",
		long: `
Supervises the VM NAME in the foreground: prepares its files (the read-only
image, its own /etc and /var, seeded from the image on first start), starts
its three virtiofsd daemons, then its VMM as the unprivileged VMM user.
SIGTERM or Ctrl-C shuts the guest down cleanly, waits for the VMM to exit,
and only then stops the daemons. The guest's serial console is written to
RUN_DIR/NAME/console.log, begun anew at each start (the one before kept as
console.log.1) and rotated at 10 MiB. A VMM killed by its memory limit is
logged as such, and the supervisor exits non-zero, to be restarted.

The host part must be applied first (microvm apply --host-only) and the
image built (microvm image build debian). Needs root.

Examples:
  sudo microvm run vm1
  sudo microvm run -f /etc/microvm/infra.toml vm2`,
		run: func(e *env, args []string) error {
			in, vm, err := e.oneVM(args)
			if err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			// Started by its keeper: not before it is in its VM's cgroup.
			if err := supervise.WaitGate(); err != nil {
				return err
			}
			stop, release := stopOnSignal()
			defer release()
			return runner.Run(in, vm, stop, e.stderr)
		},
	}
}

// stopOnSignal returns a channel closed on the first SIGTERM (systemd's
// stop) or SIGINT (Ctrl-C), for the commands that run until stopped;
// release stops listening.
func stopOnSignal() (stop <-chan struct{}, release func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	c := make(chan struct{})
	go func() {
		if _, ok := <-sigs; ok {
			close(c)
		}
	}()
	return c, func() { signal.Stop(sigs); close(sigs) }
}
