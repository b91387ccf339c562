package config

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// What a VM may take from the host: its cgroup's limits (memory, processes,
// CPU, I/O) and its disk. One cgroup holds everything that runs for a VM,
// its supervisor (`microvm run NAME`), its virtiofs daemons and its VMM:
// under systemd the unit microvm@NAME.service, elsewhere a cgroup the
// detached keeper makes (package cgroup). The disk is bounded by the
// storage backend: a ZFS refquota, or a project quota on the state
// directory's filesystem (package storage).
//
//	disk = "20G"       [defaults] and [vm.NAME]: what its /etc, /var (and writable image) may hold; its volumes come on top
//	cpu_max = "200%"   [defaults] and [vm.NAME]: at most two CPUs' time, as systemd's CPUQuota=; none by default
//	io_weight = 100    [defaults] and [vm.NAME]: its share of disk time against others, 1 to 10000, as systemd's IOWeight=
//
// Derived, not written: the memory limit (the guest's memory and what its
// processes take beside it, MemoryOverheadMiB), the process limit and the
// CPU weight (100 per vCPU, so a VM's share under contention follows its
// vCPUs).

// Limits are what a VM's processes and data may take.
type Limits struct {
	MemoryMiB int   // memory.max of its cgroup: the guest's memory and the VMM's, daemons' and supervisor's own
	Pids      int   // pids.max: processes and threads of all of them
	CPUWeight int   // cpu.weight, 1 to 10000 (100 is a process's default share)
	CPUMax    int   // cpu.max as percent of one CPU (200: two CPUs' time); 0 for none
	IOWeight  int   // io.weight, 1 to 10000
	DiskBytes int64 // the disk key: what its /etc, /var (and writable image) may hold
}

// Defaults of the limit keys.
const (
	DefaultDisk     = "20G"
	DefaultIOWeight = 100
	MinDiskBytes    = 64 << 20 // a Debian guest's /etc and /var take about 30 MiB when seeded
	MaxDiskBytes    = 1 << 50  // 1P
	MaxCPUMax       = 64 * 100 // as many CPUs as a VM may have
)

// MemoryOverheadMiB is what a VM's processes take beside its guest's
// memory, which its cgroup's memory limit adds to memory: the VMM's own
// code, heap and page tables, its three virtiofs daemons and its
// supervisor, and under emulation (accel = "tcg") QEMU's translated-code
// cache. It is a constant per VMM and accelerator, plus 2% of the guest's
// memory for what grows with it (page tables, the kernel's bookkeeping).
//
// Measured (go run ./bench limits, docs/benchmarks.md#limits): with QEMU
// under TCG, once the guest had touched all of its memory and run code
// the boot did not, what the VM's cgroup held beside the guest's memory
// and the page cache (which the kernel takes back before it kills for a
// limit) was at most 200 MiB, for 512 MiB and for 1024 MiB of guest
// memory alike: 128 MiB of it QEMU's code cache (tb-size, package qemu),
// about 25 MiB QEMU's heap, 33 MiB the supervisor, 10 MiB the daemons,
// the rest the kernel's. 256 MiB leaves room above it. Without the code
// cache (QEMU under KVM) the same is about 75 MiB: 128 MiB. Cloud
// Hypervisor is not installable on the machines the project is tested
// on; a Rust VMM without an emulator, its own footprint is smaller than
// QEMU's, and it is given QEMU's figure under KVM.
func MemoryOverheadMiB(h Hypervisor, accel Accel, memoryMiB int) int {
	base := 128
	if h == QEMU && accel == TCG {
		base = 256
	}
	return base + memoryMiB*2/100
}

// DiskQuota is what STATE_DIR/NAME may hold, the limit the storage sets
// (a ZFS refquota, a project quota): its disk and the sizes of its
// volumes, which are files in it (STATE_DIR/NAME/volumes). So a volume
// needs no larger disk, and all a VM keeps stays bounded, even a VMM that
// writes past a volume's end. The room is shared: volumes are sparse, so
// a guest that fills its /var can leave a volume short of room (its writes
// there fail), as on a thin-provisioned disk.
func (vm *VM) DiskQuota() int64 {
	b := vm.Limits.DiskBytes
	for _, v := range vm.Volumes {
		b += v.Size
	}
	return b
}

// PidsMax is the process limit of a VM's cgroup: its VMM's threads (one
// per vCPU and its workers), three virtiofs daemons with their thread
// pools, and the supervisor's threads, with room to spare; it stops a VMM
// gone wrong from filling the host's process table.
func PidsMax(vcpu int) int { return 512 + 16*vcpu }

// CgroupName is the name of vm's cgroup when the detached keeper makes it
// (under systemd the cgroup is the unit's, microvm@NAME.service):
// microvm-NAME, and with a run_dir other than the default a digest of it
// too, as two files with their own run_dir (tests, a demo) may each have
// a VM of the same name on one host.
func (vm *VM) CgroupName() string {
	if filepath.Dir(vm.RunDir) == DefaultRunDir {
		return "microvm-" + vm.Name
	}
	sum := sha256.Sum256([]byte(filepath.Dir(vm.RunDir)))
	return fmt.Sprintf("microvm-%s-%x", vm.Name, sum[:4])
}

// CgroupRecord records where the keeper made vm's cgroup, for the commands
// that look at it from another cgroup (status, down, destroy): in the
// root-only part of the run directory.
func (vm *VM) CgroupRecord() string { return filepath.Join(vm.RunDir, "cgroup.json") }

// ProjectID is the project quota ID of vm's state directory with storage =
// "dir" (ext4 and XFS project quotas): derived from its name, as its MAC
// is, and so the same on every host, in a high range (2^30 to 2^31) that
// projects numbered by hand stay clear of.
func (vm *VM) ProjectID() uint32 { return projectID(vm.Name) }

func projectID(name string) uint32 {
	sum := sha256.Sum256([]byte("microvm-project:" + name))
	return 1<<30 | binary.BigEndian.Uint32(sum[:4])&(1<<30-1)
}

// defaultLimits are the limit keys' defaults; derive completes them.
func defaultLimits() Limits {
	b, _ := ParseSize(DefaultDisk)
	return Limits{IOWeight: DefaultIOWeight, DiskBytes: b}
}

// limits reads disk, cpu_max and io_weight from vals (the table called
// table) into vm, and derives the limits that follow from its memory, vCPUs
// and hypervisor.
func (p *parser) limits(vm *VM, vals map[string]*value, table string, accel Accel) {
	if vm.Limits.DiskBytes == 0 {
		vm.Limits = defaultLimits()
	}
	l := &vm.Limits
	if v, ok := vals["disk"]; ok {
		if s, ok := p.sizeString(v, table+".disk", "disk = \"20G\""); ok {
			n, err := ParseSize(s)
			switch {
			case err != nil:
				p.errorf(v.pos, "%s.disk = %q %v, e.g. disk = \"20G\"", table, s, err)
			case n < MinDiskBytes || n > MaxDiskBytes:
				p.errorf(v.pos, "%s.disk = %q is out of range; use 64M to 1024T", table, s)
			default:
				l.DiskBytes = n
			}
		}
	}
	if v, ok := vals["cpu_max"]; ok {
		if s, ok := p.sizeString(v, table+".cpu_max", "cpu_max = \"200%\" for two CPUs' time"); ok {
			n, err := parsePercent(s)
			switch {
			case err != nil:
				p.errorf(v.pos, "%s.cpu_max = %q %v", table, s, err)
			case n < 1 || n > MaxCPUMax:
				p.errorf(v.pos, "%s.cpu_max = %q is out of range; use 1%% to %d%% (100%% is one CPU's time)", table, s, MaxCPUMax)
			default:
				l.CPUMax = n
			}
		}
	}
	if v, ok := vals["io_weight"]; ok {
		if n, ok := p.num(v, table+".io_weight"); ok {
			if n < 1 || n > 10000 {
				p.errorf(v.pos, "%s.io_weight = %d is out of range; use 1 to 10000 (100 is the default share)", table, n)
			}
			l.IOWeight = n
		}
	}
	l.MemoryMiB = vm.MemoryMiB + MemoryOverheadMiB(vm.Hypervisor, accel, vm.MemoryMiB)
	l.Pids = PidsMax(vm.VCPU)
	l.CPUWeight = 100 * vm.VCPU
}

// sizeString is a string value, or an error that shows how to write it.
func (p *parser) sizeString(v *value, key, example string) (string, bool) {
	if v.kind != unstable.String {
		p.errorf(v.pos, "%s must be a string in quotes, not %s; e.g. %s", key, kindName(v.kind), example)
		return "", false
	}
	return v.str, true
}

// ParseSize reads a size as disk takes it: a whole number and M, G or T,
// in binary units as ZFS and the quota tools read them (1G = 1024M).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("is empty; write a whole number and M, G or T")
	}
	unit := s[len(s)-1]
	shift := map[byte]uint{'M': 20, 'G': 30, 'T': 40}[unit]
	if shift == 0 {
		return 0, fmt.Errorf("does not end in M, G or T (binary units: 1G = 1024M)")
	}
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil || n < 0 || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("is not a whole number and M, G or T")
	}
	if n > MaxDiskBytes>>shift {
		return math.MaxInt64, nil // out of any range: the caller says which
	}
	return n << shift, nil
}

// FormatSize writes bytes as ParseSize reads them, in the largest unit
// that divides them.
func FormatSize(b int64) string {
	for _, u := range []struct {
		shift uint
		s     string
	}{{40, "T"}, {30, "G"}, {20, "M"}} {
		if b%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", b>>u.shift, u.s)
		}
	}
	return fmt.Sprintf("%dK", b>>10)
}

// parsePercent reads cpu_max: a whole number of percent of one CPU.
func parsePercent(s string) (int, error) {
	num, ok := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || strings.HasPrefix(num, "+") {
		return 0, fmt.Errorf("is not a percentage of one CPU's time; write e.g. \"50%%\" for half a CPU or \"200%%\" for two CPUs")
	}
	return n, nil
}
