package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Keep is the detached keeper of one VM, for hosts without systemd: it does
// what systemd does with microvm@NAME.service. It runs `bin run -f file
// NAME` with its output in log, and starts it again RestartDelay after it
// fails (Restart=on-failure), so a VMM that dies is running again within
// seconds. On SIGTERM it passes the signal on, waits for the supervisor to
// shut the guest down, and exits. It holds vm.KeeperPidFile() while it runs.
//
// A supervisor that exits 0 (the guest powered off) is not restarted; one
// that fails 10 times within a minute is given up on, as systemd's
// StartLimitBurst does.
func Keep(bin, file string, vm *config.VM, log io.Writer) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	run, err := OpenRunDir(vm)
	if err != nil {
		return err
	}
	defer run.Close()
	pidFile := filepath.Base(vm.KeeperPidFile())
	if err := run.WriteFile(pidFile, []byte(proc.Self().Format()), 0o644); err != nil {
		return err
	}
	defer run.Remove(pidFile)
	logf := func(format string, args ...any) {
		fmt.Fprintf(log, "%s keeper: %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
	var failures []time.Time
	for {
		cmd := exec.Command(bin, "run", "-f", file, vm.Name)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s run: %w", bin, err)
		}
		logf("started microvm run %s (pid %d)", vm.Name, cmd.Process.Pid)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case sig := <-sigs:
			logf("%s: stopping %s", sig, vm.Name)
			_ = cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited, which done tells
			select {
			case err := <-done:
				logf("stopped (%v)", exitText(err))
				return nil
			case <-time.After(StopTimeout):
				_ = cmd.Process.Kill() // as above
				<-done
				return fmt.Errorf("the supervisor of %s did not stop in %s; killed", vm.Name, StopTimeout)
			}
		case err := <-done:
			if err == nil {
				logf("microvm run %s exited cleanly; not restarting", vm.Name)
				return nil
			}
			now := time.Now()
			failures = append(failures, now)
			for len(failures) > 0 && now.Sub(failures[0]) > time.Minute {
				failures = failures[1:]
			}
			if len(failures) >= 10 {
				logf("microvm run %s failed %d times in a minute; giving up", vm.Name, len(failures))
				return fmt.Errorf("%s failed too often", vm.Name)
			}
			logf("microvm run %s failed (%s); restarting in %s", vm.Name, exitText(err), RestartDelay)
			select {
			case <-sigs:
				logf("stopped while waiting to restart")
				return nil
			case <-time.After(RestartDelay):
			}
		}
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// OpenRunDir makes (if missing) and opens vm's run directory, the part of
// it that is root's (see config's runtime.go): owned by root, mode
// config.RunDirMode, so that the VMM's user reaches its own directory and
// sockets in it by name but cannot list it or change anything in it.
func OpenRunDir(vm *config.VM) (*safedir.Dir, error) {
	d, err := safedir.MakePrivate(vm.RunDir, config.RunDirMode)
	if err != nil {
		return nil, fmt.Errorf("making %s: %w", vm.RunDir, err)
	}
	return d, nil
}

// KeeperPid returns vm's keeper if one is running. The pid file is read
// only from a run directory that root alone can write, and the pid counts
// only if its process started when the keeper that wrote it did.
func KeeperPid(vm *config.VM) (proc.ID, bool) {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if err != nil {
		return proc.ID{}, false
	}
	defer d.Close()
	b, err := d.ReadFile(filepath.Base(vm.KeeperPidFile()))
	if err != nil {
		return proc.ID{}, false
	}
	id, err := proc.Parse(string(b))
	if err != nil {
		return proc.ID{}, false
	}
	return id, id.Alive()
}

// StartDetached starts the keeper of vm in its own session, detached from
// the caller: `bin keep -f file NAME`, its output appended to
// vm.SupervisorLog(). It returns once the keeper has written its pid file.
func StartDetached(bin, file string, vm *config.VM) (int, error) {
	run, err := OpenRunDir(vm)
	if err != nil {
		return 0, err
	}
	defer run.Close()
	log, err := run.OpenAppend(filepath.Base(vm.SupervisorLog()), 0o600)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	if err := run.Remove(filepath.Base(vm.KeeperPidFile())); err != nil {
		return 0, err
	}
	cmd := exec.Command(bin, "keep", "-f", file, vm.Name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting the keeper of %s: %w", vm.Name, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // that it exited is what counts: its log says why
	deadline := time.After(10 * time.Second)
	for {
		if p, ok := KeeperPid(vm); ok && p.Pid == pid {
			cmd.Process.Release()
			return pid, nil
		}
		select {
		case <-exited:
			return 0, fmt.Errorf("the keeper of %s exited at once; see %s", vm.Name, vm.SupervisorLog())
		case <-deadline:
			return 0, fmt.Errorf("the keeper of %s wrote no pid file in 10s; see %s", vm.Name, vm.SupervisorLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ErrNotRunning is returned by StopDetached when vm has no keeper.
var ErrNotRunning = errors.New("not running")

// StopDetached asks vm's keeper to stop (SIGTERM, which it passes to the
// supervisor, which shuts the guest down) and waits for it to exit.
func StopDetached(vm *config.VM, timeout time.Duration) error {
	id, ok := KeeperPid(vm)
	if !ok {
		return ErrNotRunning
	}
	if err := id.Signal(syscall.SIGTERM); errors.Is(err, proc.ErrGone) {
		return ErrNotRunning
	} else if err != nil {
		return fmt.Errorf("stopping %s (keeper %s): %w", vm.Name, id, err)
	}
	return WaitGone(id, timeout, fmt.Sprintf("%s did not stop in %s (keeper %s); see %s", vm.Name, timeout, id, vm.SupervisorLog()))
}

// WaitGone waits until id's process has exited, or fails with msg after
// timeout.
func WaitGone(id proc.ID, timeout time.Duration, msg string) error {
	deadline := time.Now().Add(timeout)
	for id.Alive() {
		if time.Now().After(deadline) {
			return errors.New(msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
