package runner

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// oomWatch tells whether the kernel killed a process of the supervisor's
// cgroup (its VMM, a daemon) for the cgroup's memory limit: the cgroup
// is the VM's (its unit's under systemd, its keeper's elsewhere), which
// counts such kills (memory.events, memory.oom_control).
type oomWatch struct {
	g      *cgroup.Group
	before int
}

// watchOOM starts watching; logf says where the supervisor runs, and
// with which limits.
func watchOOM(vm *config.VM, logf func(string, ...any)) oomWatch {
	g, err := cgroup.Self()
	if err != nil {
		logf("its cgroup cannot be read, nor an OOM kill told from another death: %v", err)
		return oomWatch{}
	}
	u, err := g.Use()
	if err != nil {
		logf("the use of its cgroup cannot be read, nor an OOM kill told from another death: %v", err)
		return oomWatch{}
	}
	mem, pids := "no memory limit", "no process limit"
	if u.MemoryMax > 0 {
		mem = fmt.Sprintf("memory limit %d MiB", u.MemoryMax>>20)
	}
	if u.PidsMax > 0 {
		pids = fmt.Sprintf("process limit %d", u.PidsMax)
	}
	logf("in cgroup %s: %s, %s", g, mem, pids)
	return oomWatch{g: g, before: u.OOMKills}
}

// killed says, once something of the VM died, whether the kernel killed
// it for the memory limit, and what the limit is.
func (w oomWatch) killed() (string, bool) {
	if w.g == nil {
		return "", false
	}
	u, err := w.g.Use()
	if err != nil || u.OOMKills <= w.before {
		return "", false
	}
	return fmt.Sprintf("killed by the memory limit of %d MiB", u.MemoryMax>>20), true
}

// openConsole makes the pipe the VMM writes the guest's console into, and
// copies what comes out of it into the console log, begun anew (the one
// before kept as console.log.1) and rotated at supervise.LogMax. The
// caller gives w to the VMM and closes it then; done is closed once the
// VMM, the last writer, has gone and all it wrote is in the log.
func openConsole(run *safedir.Dir, vm *config.VM) (w *os.File, done <-chan struct{}, err error) {
	log, err := supervise.OpenLog(run, filepath.Base(vm.ConsoleLog()), supervise.LogMax, true)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the console log of %s: %w", vm.Name, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, nil, err
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		defer r.Close()
		defer log.Close()
		// A full run_dir loses console output, never the guest's speed:
		// the copy goes on reading.
		_, _ = io.Copy(struct{ io.Writer }{ignoreErrors{log}}, r)
	}()
	return w, ch, nil
}

// ignoreErrors writes to w and reports every write done.
type ignoreErrors struct{ w io.Writer }

func (i ignoreErrors) Write(p []byte) (int, error) {
	_, _ = i.w.Write(p)
	return len(p), nil
}
