package systemd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
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
	if err := os.WriteFile(vm.KeeperPidFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(vm.KeeperPidFile())
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
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				logf("stopped (%v)", exitText(err))
				return nil
			case <-time.After(StopTimeout):
				cmd.Process.Kill()
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

// KeeperPid returns the pid of vm's keeper if one is running.
func KeeperPid(vm *config.VM) (int, bool) {
	b, err := os.ReadFile(vm.KeeperPidFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, Alive(pid)
}

// Alive reports whether process pid exists (and is not a zombie).
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// StartDetached starts the keeper of vm in its own session, detached from
// the caller: `bin keep -f file NAME`, its output appended to
// vm.SupervisorLog(). It returns once the keeper has written its pid file.
func StartDetached(bin, file string, vm *config.VM) (int, error) {
	if err := os.MkdirAll(vm.RunDir, 0o750); err != nil {
		return 0, err
	}
	log, err := os.OpenFile(vm.SupervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	os.Remove(vm.KeeperPidFile())
	cmd := exec.Command(bin, "keep", "-f", file, vm.Name)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting the keeper of %s: %w", vm.Name, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.After(10 * time.Second)
	for {
		if p, ok := KeeperPid(vm); ok && p == pid {
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
	pid, ok := KeeperPid(vm)
	if !ok {
		return ErrNotRunning
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping %s (keeper pid %d): %w", vm.Name, pid, err)
	}
	deadline := time.Now().Add(timeout)
	for Alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not stop in %s (keeper pid %d); see %s", vm.Name, timeout, pid, vm.SupervisorLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
