package metrics

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// The host processes of a VM are its supervisor (`microvm run NAME`, whose
// pid and start time its started record holds) and everything below it:
// its virtiofs daemons, its VMM, and whatever wraps them. One pass over
// /proc per scrape finds them all, whatever the number of VMs: the parent,
// start time and CPU time of every process, from /proc/PID/stat.

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture the program runs on.
const userHZ = 100

// procInfo is what /proc/PID/stat says of one process.
type procInfo struct {
	ppid  int
	start uint64 // in clock ticks since boot, as proc.ID has it
	cpu   uint64 // utime+stime+cutime+cstime, in clock ticks
}

// procTable is every process of the host at one moment.
type procTable struct {
	procs    map[int]procInfo
	children map[int][]int
}

// readProcs reads /proc/*/stat. A process that exits meanwhile is simply
// not there.
func readProcs(root string) (*procTable, error) {
	d, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	t := &procTable{procs: make(map[int]procInfo, len(names)), children: map[int][]int{}}
	buf := make([]byte, 1024)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		p, ok := readStat(root+"/"+n+"/stat", buf)
		if !ok {
			continue
		}
		t.procs[pid] = p
		t.children[p.ppid] = append(t.children[p.ppid], pid)
	}
	return t, nil
}

// readStat parses /proc/PID/stat into p. The command name in parentheses
// may hold anything, so the fields are counted from the last ')'.
func readStat(path string, buf []byte) (p procInfo, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return p, false
	}
	n, err := f.Read(buf)
	f.Close()
	if err != nil || n == 0 {
		return p, false
	}
	b := buf[:n]
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return p, false
	}
	f3 := bytes.Fields(b[i+1:])
	// f3[0] is field 3 (state); ppid is 4, utime 14, stime 15, cutime 16,
	// cstime 17, starttime 22.
	if len(f3) < 20 {
		return p, false
	}
	num := func(k int) uint64 { v, _ := strconv.ParseUint(string(f3[k-3]), 10, 64); return v }
	ppid, _ := strconv.Atoi(string(f3[1]))
	p = procInfo{ppid: ppid, start: num(22), cpu: num(14) + num(15) + num(16) + num(17)}
	return p, true
}

// tree is pid and every process below it, if pid is the process that
// started at start; nil if that process is gone.
func (t *procTable) tree(pid int, start uint64) []int {
	if p, ok := t.procs[pid]; !ok || p.start != start {
		return nil
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, t.children[out[i]]...)
	}
	return out
}

// cpu is the CPU time the processes took, each reaped child's included
// (in its parent's cutime and cstime), so the total only grows while the
// supervisor runs.
func (t *procTable) cpu(pids []int) time.Duration {
	var ticks uint64
	for _, pid := range pids {
		ticks += t.procs[pid].cpu
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// resident is the memory the processes hold in RAM, from /proc/PID/statm:
// what each has of its own (resident less shared), and the largest shared
// part once. The shared part is mostly the guest's RAM, which the VMM and
// each virtiofs daemon map (virtiofs needs the guest's memory shared):
// added up per process it would count several times.
func resident(root string, pids []int) int64 {
	page := int64(os.Getpagesize())
	var own, shared int64
	buf := make([]byte, 256)
	for _, pid := range pids {
		f, err := os.Open(root + "/" + strconv.Itoa(pid) + "/statm")
		if err != nil {
			continue
		}
		n, _ := f.Read(buf)
		f.Close()
		fs := bytes.Fields(buf[:n])
		if len(fs) < 3 {
			continue
		}
		res, _ := strconv.ParseInt(string(fs[1]), 10, 64)
		sh, _ := strconv.ParseInt(string(fs[2]), 10, 64)
		own += max(res-sh, 0)
		shared = max(shared, sh)
	}
	return (own + shared) * page
}
