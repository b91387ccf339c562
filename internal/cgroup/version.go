package cgroup

import (
	"fmt"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// version is what differs between cgroup v1 and v2: the files that hold a
// limit, and those that hold the use. The values are systemd's for the
// same unit settings (MemoryMax=, TasksMax=, CPUWeight=, CPUQuota=,
// IOWeight=), so a VM is limited alike with or without systemd.
type version interface {
	// settings are the files to write for l, in order.
	settings(l config.Limits) []setting
	// files names the files that hold the memory use, its limit, its
	// peak, and the count of OOM kills (a flat-keyed file with
	// "oom_kill N").
	files() useFiles
}

type setting struct {
	ctl, file, value string
	optional         bool // a file the kernel may not have (swap accounting, I/O weights): skipped then
}

type useFiles struct{ memory, memoryMax, memoryPeak, oom string }

// cpuPeriod is the CFS period cpu_max is a share of: 100 ms, systemd's.
const cpuPeriod = 100000

// v2 is the unified hierarchy.
type v2 struct{}

func (v2) settings(l config.Limits) []setting {
	quota := "max"
	if l.CPUMax > 0 {
		quota = fmt.Sprint(l.CPUMax * cpuPeriod / 100)
	}
	return []setting{
		{ctl: "memory", file: "memory.max", value: fmt.Sprint(int64(l.MemoryMiB) << 20)},
		// No swap: the limit is what the VM takes, not what it takes in RAM.
		{ctl: "memory", file: "memory.swap.max", value: "0", optional: true},
		{ctl: "pids", file: "pids.max", value: fmt.Sprint(l.Pids)},
		{ctl: "cpu", file: "cpu.weight", value: fmt.Sprint(l.CPUWeight)},
		{ctl: "cpu", file: "cpu.max", value: fmt.Sprintf("%s %d", quota, cpuPeriod)},
		// io.weight where the io.cost controller is on, io.bfq.weight
		// where the disk's scheduler is BFQ, as systemd writes both.
		{ctl: "blkio", file: "io.weight", value: fmt.Sprintf("default %d", l.IOWeight), optional: true},
		{ctl: "blkio", file: "io.bfq.weight", value: fmt.Sprint(bfqWeight(l.IOWeight)), optional: true},
	}
}

func (v2) files() useFiles {
	return useFiles{"memory.current", "memory.max", "memory.peak", "memory.events"}
}

// v1 is one hierarchy per controller.
type v1 struct{}

func (v1) settings(l config.Limits) []setting {
	quota := "-1"
	if l.CPUMax > 0 {
		quota = fmt.Sprint(l.CPUMax * cpuPeriod / 100)
	}
	mem := fmt.Sprint(int64(l.MemoryMiB) << 20)
	return []setting{
		{ctl: "memory", file: "memory.limit_in_bytes", value: mem},
		// Memory and swap together, no more than memory alone: no swap.
		// After the limit, which it may not be below.
		{ctl: "memory", file: "memory.memsw.limit_in_bytes", value: mem, optional: true},
		{ctl: "pids", file: "pids.max", value: fmt.Sprint(l.Pids)},
		// cpu.shares of 1024 is cpu.weight's 100.
		{ctl: "cpu", file: "cpu.shares", value: fmt.Sprint(max(2, l.CPUWeight*1024/100))},
		{ctl: "cpu", file: "cpu.cfs_period_us", value: fmt.Sprint(cpuPeriod)},
		{ctl: "cpu", file: "cpu.cfs_quota_us", value: quota},
		// blkio.weight is 10 to 1000, 500 the default where io.weight's is 100.
		{ctl: "blkio", file: "blkio.weight", value: fmt.Sprint(min(1000, max(10, l.IOWeight*5))), optional: true},
		{ctl: "blkio", file: "blkio.bfq.weight", value: fmt.Sprint(bfqWeight(l.IOWeight)), optional: true},
	}
}

func (v1) files() useFiles {
	return useFiles{"memory.usage_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.oom_control"}
}

// bfqWeight is BFQ's 1 to 1000 for an io.weight of 1 to 10000, 100 the
// default of both.
func bfqWeight(w int) int { return min(1000, max(1, w)) }
