package cli

import (
	"path/filepath"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

func keepCmd() *command {
	return &command{
		name:  "keep",
		args:  "[-f FILE] NAME",
		short: "keep one VM running, restarting it on failure (what up runs without systemd)",
		long: `
Runs microvm run NAME and starts it again one second after it fails, as
systemd does with microvm@NAME.service (Restart=on-failure); SIGTERM stops
the VM cleanly. It writes its pid to RUN_DIR/NAME/keeper.pid. The
supervisor, its virtiofsd daemons and its VMM run in a cgroup of their own
with the VM's limits, made below the keeper's cgroup; what is left in it
when the supervisor exits is killed.

microvm up starts it detached, with its output in RUN_DIR/NAME/supervisor.log
(rotated at 10 MiB, the one before kept as supervisor.log.1), on hosts
where systemd is not PID 1; a person rarely runs it directly.

Examples:
  sudo microvm keep vm1`,
		run: func(e *env, args []string) error {
			_, vm, err := e.oneVM(args)
			if err != nil {
				return err
			}
			if err := needRoot(changesHost); err != nil {
				return err
			}
			bin, file, err := lifecycle.Self(e.file)
			if err != nil {
				return err
			}
			// The log rotates (supervise.LogMax); what the keeper says
			// before it is open goes to stderr, which microvm up points
			// at the same file.
			run, err := supervise.OpenRunDir(vm)
			if err != nil {
				return err
			}
			defer run.Close()
			log, err := supervise.OpenLog(run, filepath.Base(vm.SupervisorLog()), supervise.LogMax, false)
			if err != nil {
				return err
			}
			defer log.Close()
			return supervise.Keep(bin, file, vm, log)
		},
	}
}
