package cli

import (
	"path/filepath"

	"github.com/simple-microvm-infra/microvm/internal/cgroup"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/metrics"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// vmCgroup finds a running VM's cgroup for the metrics and top: the one
// its keeper made and recorded (detached), or its unit's under systemd,
// found through its supervisor. A supervisor in any other cgroup (microvm
// run in a shell) shares it with others: then there is none, and the
// metrics read the VM's processes one by one.
func vmCgroup(vm *config.VM) (metrics.Cgroup, bool) {
	if g, ok := supervise.Cgroup(vm); ok {
		return dirsOf(g), true
	}
	st, ok, err := runner.ReadStarted(vm)
	if err != nil || !ok {
		return nil, false
	}
	g, err := cgroup.Of(st.RunPid)
	if err != nil || filepath.Base(g.String()) != supervise.Unit(vm.Name) {
		return nil, false
	}
	return dirsOf(g), true
}

func dirsOf(g *cgroup.Group) metrics.CgroupDirs {
	return metrics.CgroupDirs{CPU: g.Dir("cpu"), Memory: g.Dir("memory")}
}
