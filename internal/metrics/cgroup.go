package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// A VM whose processes are in a control group of their own is measured by
// the kernel there: the CPU time of every process that ever ran in it, and
// the memory it is charged (each page once, the page cache its processes
// brought in included). Where a VM has none, its processes are read one
// by one (proc.go). Which cgroup a VM has is not this package's business:
// Options.Cgroups says.

// Cgroup is a VM's control group, as the metrics read it.
type Cgroup interface {
	// Usage is the CPU time its processes took and the memory charged to
	// it now.
	Usage() (cpu time.Duration, memory int64, err error)
}

// CgroupOf finds vm's control group; ok is false when it has none.
type CgroupOf func(vm *config.VM) (g Cgroup, ok bool)

// CgroupDirs is a cgroup by its directories: CPU holds its CPU time (cgroup
// v2's cpu.stat, or v1's cpuacct.usage), Memory its memory use (v2's
// memory.current, or v1's memory.usage_in_bytes). In v2 both are the same
// directory; in v1 each controller is a hierarchy of its own.
type CgroupDirs struct{ CPU, Memory string }

// Usage reads the files of either version, whichever is there.
func (d CgroupDirs) Usage() (time.Duration, int64, error) {
	cpu, err := cgroupCPU(d.CPU)
	if err != nil {
		return 0, 0, err
	}
	mem, err := firstNumber(d.Memory, "memory.current", "memory.usage_in_bytes")
	if err != nil {
		return 0, 0, err
	}
	return cpu, mem, nil
}

// cgroupCPU reads v2's cpu.stat (usage_usec) or v1's cpuacct.usage (ns).
func cgroupCPU(dir string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err == nil {
		for _, line := range bytes.Split(b, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte("usage_usec ")); ok {
				us, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("reading %s/cpu.stat: %w", dir, err)
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	ns, err := firstNumber(dir, "cpuacct.usage")
	return time.Duration(ns), err
}

// firstNumber reads the number in the first of names that dir has.
func firstNumber(dir string, names ...string) (int64, error) {
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading %s/%s: %w", dir, n, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("cgroup %s has none of %v", dir, names)
}
