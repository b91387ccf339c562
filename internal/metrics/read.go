package metrics

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostpart"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// Sample is the host and its VMs at one moment.
type Sample struct {
	Time time.Time
	VMs  []VM // in the file's order (by name)
	Host Host
	// Errors says what could not be read, by source ("links", "firewall",
	// "processes", "config", "disk", "tailscale"); that part of the
	// sample is missing.
	Errors map[string]error
}

// VM is one VM at one moment. The fields a VM in its state does not have
// are zero; the Has* fields say which of the others were read.
type VM struct {
	Name, Address, Hypervisor string
	State                     lifecycle.State
	GuestReady                bool
	Started                   time.Time // its VMM's start, while running
	Boots                     runner.Boots

	CPU          time.Duration // its host processes' CPU time, while running
	Memory       int64         // resident, while running
	GuestMemory  int64         // the RAM it was given, while running
	Processes    int           // its host processes, when counted one by one (0 with a cgroup)
	HasResources bool          // CPU and Memory were read

	Traffic    Traffic // on its TAP, as its guest sees it
	HasTraffic bool    // its TAP exists

	DroppedFrom, DroppedTo Count // what the firewall dropped of what it sent, and of what was sent to it
	HasDrops               bool  // its counters are in the loaded table

	Disk      int64 // its /etc and /var (with ZFS, with its snapshots), as last measured
	HasDisk   bool
	Snapshots int // with ZFS
	HasSnaps  bool
}

// Host is the host's side at one moment.
type Host struct {
	TablePresent bool // the program's nftables table is loaded
	TableRead    bool // ... which could be read
	Keeper       bool // a microvm host keeps the firewall
	Repairs      int  // the repairs it made
	LastRepair   time.Time
	Tailscale    *tailscale.Report // nil before it was first read, or when disabled
	DiskImages   int64
	DiskTotal    int64
	HasDisk      bool
	DiskAt       time.Time // when the disk was last measured
}

// Reader reads samples. Its slow part (disk, snapshots, Tailscale) is
// read in the background by Refresh, never by Read.
type Reader struct {
	// File is the infra.toml to read: read again when it changes.
	File string
	// Cgroups finds a VM's control group; nil when no VM has one.
	Cgroups CgroupOf
	// Proc is where /proc is (tests and the benchmark point it elsewhere).
	Proc string

	mu     sync.Mutex
	in     *config.Infra
	fileID string // size and time of File when in was read

	slowMu sync.Mutex
	slow   slowSample
	kick   chan struct{} // a VM started or stopped: measure the disk again
	states string        // the VMs' states at the last Read
}

// Model returns the model of the file, read again when the file changed.
// A file that no longer parses leaves the last good model in place, with
// the error.
func (r *Reader) Model() (*config.Infra, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.File)
	if err != nil {
		if r.in != nil {
			return r.in, fmt.Errorf("reading %s: %w", r.File, err)
		}
		return nil, err
	}
	id := fmt.Sprintf("%d %d", fi.Size(), fi.ModTime().UnixNano())
	if r.in != nil && id == r.fileID {
		return r.in, nil
	}
	in, err := config.Load(r.File)
	if err != nil {
		if r.in != nil {
			return r.in, err
		}
		return nil, err
	}
	r.in, r.fileID = in, id
	return in, nil
}

// Read takes a sample. It reads small files in the run directory, /proc,
// and the kernel over netlink; it runs no command and walks no directory.
func (r *Reader) Read() Sample {
	s := Sample{Time: time.Now(), Errors: map[string]error{}}
	in, err := r.Model()
	if err != nil {
		s.Errors["config"] = err
	}
	if in == nil {
		return s
	}
	proc := r.Proc
	if proc == "" {
		proc = "/proc"
	}
	taps := make(map[string]bool, len(in.VMs))
	for i := range in.VMs {
		taps[in.VMs[i].TAP] = true
	}
	links, err := linkTraffic(taps)
	if err != nil {
		s.Errors["links"] = err
	}
	present, counters, err := dropCounters()
	s.Host.TablePresent, s.Host.TableRead = present, err == nil
	if err != nil {
		s.Errors["firewall"] = err
	}
	if st, ok := hostpart.ReadState(in.Host); ok {
		s.Host.Keeper, s.Host.Repairs = true, st.Repairs
		if last := st.Last(); last != nil {
			s.Host.LastRepair = last.Heard
		}
	}
	var procs *procTable
	var locks map[lockID]bool
	var states strings.Builder
	slow := r.slowCopy()
	s.Host.Tailscale = slow.tailscale
	s.Host.DiskImages, s.Host.DiskTotal, s.Host.HasDisk, s.Host.DiskAt = slow.images, slow.total, slow.hasDisk, slow.diskAt
	for k, err := range slow.errs {
		s.Errors[k] = err
	}
	for i := range in.VMs {
		cfg := &in.VMs[i]
		vm := VM{Name: cfg.Name, Address: cfg.Addr.String(), Hypervisor: string(cfg.Hypervisor), State: lifecycle.Stopped}
		vm.Boots, _ = runner.ReadBoots(cfg) // a record that cannot be read counts nothing
		st, ok, _ := runner.ReadStarted(cfg)
		if ok {
			if procs == nil {
				if procs, err = readProcs(proc); err != nil {
					s.Errors["processes"] = err
					procs = &procTable{}
				}
			}
			if tree := procs.tree(st.RunPid, st.RunStart); tree != nil && procs.alive(st.VMMPid, st.VMMStart) {
				vm.State, vm.Started, vm.GuestReady = lifecycle.Running, st.Time, st.Ready != nil
				if mib, err := strconv.Atoi(st.Settings["memory"]); err == nil {
					vm.GuestMemory = int64(mib) << 20
				}
				if h, v := st.Settings["hypervisor"]; v {
					vm.Hypervisor = h
				}
				vm.CPU, vm.Memory, vm.Processes, vm.HasResources = r.resources(cfg, procs, proc, tree)
			}
		}
		if vm.State != lifecycle.Running {
			if _, keeping := supervise.KeeperPid(cfg); keeping {
				vm.State = lifecycle.Starting
			} else {
				if locks == nil {
					locks = heldLocks(proc)
				}
				if id, ok := fileID(cfg.RunLock()); ok && locks[id] {
					vm.State = lifecycle.Starting
				}
			}
		}
		if t, ok := links[cfg.TAP]; ok {
			vm.Traffic, vm.HasTraffic = t, true
		}
		from, ok1 := counters[firewall.CounterFrom(cfg.Name)]
		to, ok2 := counters[firewall.CounterTo(cfg.Name)]
		if ok1 && ok2 {
			vm.DroppedFrom, vm.DroppedTo, vm.HasDrops = from, to, true
		}
		if d, ok := slow.disk[cfg.Name]; ok {
			vm.Disk, vm.HasDisk = d, true
		}
		if n, ok := slow.snapshots[cfg.Name]; ok {
			vm.Snapshots, vm.HasSnaps = n, true
		}
		s.VMs = append(s.VMs, vm)
		states.WriteString(vm.Name + "=" + string(vm.State) + " ")
	}
	r.changed(states.String())
	return s
}

// resources is the CPU time and memory of a running VM: from its cgroup
// if it has one that says both, else from its processes.
func (r *Reader) resources(vm *config.VM, procs *procTable, proc string, tree []int) (cpu time.Duration, mem int64, n int, ok bool) {
	if r.Cgroups != nil {
		// A cgroup v1 without cpuacct beside cpu (each mounted alone, as
		// on the test machines) cannot say the CPU time: the processes can.
		if g, has := r.Cgroups(vm); has {
			if cpu, mem, err := g.Usage(); err == nil {
				return cpu, mem, 0, true
			}
		}
	}
	return procs.cpu(tree), resident(proc, tree), len(tree), true
}

// alive reports whether the process pid that started at start runs.
func (t *procTable) alive(pid int, start uint64) bool {
	p, ok := t.procs[pid]
	return ok && p.start == start
}

// lockID is a file as /proc/locks names it: its device and inode.
type lockID struct {
	major, minor uint32
	ino          uint64
}

// fileID is the lockID of the file at path (not followed).
func fileID(path string) (lockID, bool) {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return lockID{}, false
	}
	return lockID{unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino}, true
}

// maxLocks bounds what is read of /proc/locks: a guest's file locks reach
// it through its virtiofs daemons, so its length is partly a guest's to
// choose. Past it, a supervisor that is starting may be taken for none.
const maxLocks = 1 << 20

// heldLocks reads the files locked on the host from /proc/locks, which
// shows a supervisor (it holds its VM's run.lock) without asking systemd.
func heldLocks(proc string) map[lockID]bool {
	out := map[lockID]bool{}
	f, err := os.Open(proc + "/locks")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxLocks))
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF"; a waiter's
		// line has "->" after the number.
		fs := strings.Fields(sc.Text())
		if len(fs) > 1 && fs[1] == "->" {
			continue
		}
		if len(fs) < 6 {
			continue
		}
		parts := strings.Split(fs[5], ":")
		if len(parts) != 3 {
			continue
		}
		maj, err1 := strconv.ParseUint(parts[0], 16, 32)
		min, err2 := strconv.ParseUint(parts[1], 16, 32)
		ino, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err1 == nil && err2 == nil && err3 == nil {
			out[lockID{uint32(maj), uint32(min), ino}] = true
		}
	}
	return out
}
