package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
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
// The supervisor runs in a cgroup of its own, the VM's (package cgroup),
// made anew with the VM's limits at each start, below the keeper's own
// cgroup: the supervisor's virtiofs daemons and VMM, which it starts,
// are in it too. When the supervisor exits, for whatever reason, whatever
// is left in the cgroup is killed and the cgroup removed, so that no VMM
// or daemon outlives its supervisor. Where the cgroup is is recorded in
// vm.CgroupRecord() while it exists (for Leftovers, from other commands).
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
	fail := func(err error) error {
		logf("%v", err)
		return err
	}
	// A cgroup left by a keeper that was killed, with what ran in it.
	if err := EndLeftovers(vm); err != nil {
		return fail(err)
	}
	var failures []time.Time
	for {
		cmd, g, err := startInCgroup(bin, file, vm, run, log)
		if err != nil {
			return fail(err)
		}
		logf("started microvm run %s (pid %d) in cgroup %s", vm.Name, cmd.Process.Pid, g)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var exit error
		select {
		case sig := <-sigs:
			logf("%s: stopping %s", sig, vm.Name)
			_ = cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited, which done tells
			select {
			case err := <-done:
				logf("stopped (%v)", exitText(err))
			case <-time.After(StopTimeout):
				_ = cmd.Process.Kill() // as above
				<-done
				exit = fmt.Errorf("the supervisor of %s did not stop in %s; killed", vm.Name, StopTimeout)
			}
			if err := endCgroup(run, vm, g); err != nil {
				return fail(err)
			}
			if exit != nil {
				return fail(exit)
			}
			return nil
		case err := <-done:
			exit = err
		}
		if err := endCgroup(run, vm, g); err != nil {
			return fail(err)
		}
		if exit == nil {
			logf("microvm run %s exited cleanly; not restarting", vm.Name)
			return nil
		}
		now := time.Now()
		failures = append(failures, now)
		for len(failures) > 0 && now.Sub(failures[0]) > time.Minute {
			failures = failures[1:]
		}
		if len(failures) >= 10 {
			return fail(fmt.Errorf("microvm run %s failed %d times in a minute; giving up", vm.Name, len(failures)))
		}
		logf("microvm run %s failed (%s); restarting in %s", vm.Name, exitText(exit), RestartDelay)
		select {
		case <-sigs:
			logf("stopped while waiting to restart")
			return nil
		case <-time.After(RestartDelay):
		}
	}
}

// GateEnv names the descriptor a supervisor started by its keeper waits
// on before it starts anything: the keeper closes the other end once it
// has moved the supervisor into the VM's cgroup, so that every process
// the supervisor starts is born in it (WaitGate).
const GateEnv = "MICROVM_GATE_FD"

// startInCgroup makes vm's cgroup, records it, and starts the supervisor
// in it.
func startInCgroup(bin, file string, vm *config.VM, run *safedir.Dir, log io.Writer) (*exec.Cmd, *cgroup.Group, error) {
	g, err := cgroup.Create(vm.CgroupName(), vm.Limits)
	if err != nil {
		return nil, nil, fmt.Errorf("making the cgroup of %s: %w", vm.Name, err)
	}
	rec, err := g.Record()
	if err == nil {
		err = run.WriteFile(filepath.Base(vm.CgroupRecord()), rec, 0o644)
	}
	if err != nil {
		return nil, nil, errors.Join(err, g.Remove())
	}
	gate, open, err := os.Pipe()
	if err != nil {
		return nil, nil, errors.Join(err, endCgroup(run, vm, g))
	}
	defer gate.Close()
	cmd := exec.Command(bin, "run", "-f", file, vm.Name)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{gate}
	cmd.Env = append(os.Environ(), GateEnv+"=3")
	if err := cmd.Start(); err != nil {
		open.Close()
		return nil, nil, errors.Join(fmt.Errorf("starting %s run: %w", bin, err), endCgroup(run, vm, g))
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill() // it waits at the gate: nothing of it runs yet
		cmd.Wait()
		open.Close()
		return nil, nil, errors.Join(err, endCgroup(run, vm, g))
	}
	open.Close() // the gate opens
	return cmd, g, nil
}

// WaitGate is the supervisor's side of the keeper's gate (GateEnv): it
// returns once the keeper has moved it into its VM's cgroup. Without the
// variable (run by systemd, or by a person) it returns at once.
func WaitGate() error {
	v, ok := os.LookupEnv(GateEnv)
	if !ok {
		return nil
	}
	os.Unsetenv(GateEnv) // not for the daemons and the VMM
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q is not a descriptor", GateEnv, v)
	}
	f := os.NewFile(uintptr(fd), "gate")
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return fmt.Errorf("waiting for the keeper: %w", err)
	}
	return nil
}

// endCgroup kills whatever is left in vm's cgroup, removes it and its
// record.
func endCgroup(run *safedir.Dir, vm *config.VM, g *cgroup.Group) error {
	if err := g.End(); err != nil {
		return fmt.Errorf("ending the cgroup of %s: %w", vm.Name, err)
	}
	return run.Remove(filepath.Base(vm.CgroupRecord()))
}

// Cgroup is vm's cgroup as its keeper recorded it, if the record is
// there: it may hold processes of a keeper that was killed.
func Cgroup(vm *config.VM) (*cgroup.Group, bool) {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if err != nil {
		return nil, false
	}
	defer d.Close()
	b, err := d.ReadFile(filepath.Base(vm.CgroupRecord()))
	if err != nil {
		return nil, false
	}
	g, err := cgroup.Load(b, vm.CgroupName())
	return g, err == nil
}

// Leftovers are the processes in vm's cgroup while no keeper keeps it:
// what a keeper and a supervisor killed (SIGKILL leaves them no time to
// stop anything) leave running, a VMM and its daemons. None under
// systemd, which ends a unit's processes itself.
func Leftovers(vm *config.VM) []int {
	if _, ok := KeeperPid(vm); ok {
		return nil
	}
	g, ok := Cgroup(vm)
	if !ok {
		return nil
	}
	procs, _ := g.Procs() // unreadable: none to show
	return procs
}

// EndLeftovers kills what is left in vm's recorded cgroup, removes the
// cgroup and its record. Nothing recorded is nothing to do.
func EndLeftovers(vm *config.VM) error {
	g, ok := Cgroup(vm)
	if !ok {
		return nil
	}
	run, err := OpenRunDir(vm)
	if err != nil {
		return err
	}
	defer run.Close()
	return endCgroup(run, vm, g)
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
