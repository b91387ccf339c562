// Package cgroup keeps a VM's processes in a control group of their own,
// with the VM's limits: memory, processes, CPU and I/O. It is how the
// detached keeper (package supervise, hosts without systemd) does what
// systemd does with a unit's cgroup, and how every command reads a VM's use
// against its limits, under systemd too.
//
// Both versions of cgroups are read and written, behind one small
// interface ([version]): cgroup v2, the unified hierarchy of current
// distributions (Debian 12, Ubuntu 22.04 and later), and cgroup v1, one
// hierarchy per controller (older hosts, and "hybrid" ones whose unified
// hierarchy has no controllers). Which one a host has is read from
// /proc/self/mountinfo: v2 when a cgroup2 mount offers the memory
// controller, v1 otherwise.
//
// A group is made below the cgroup the calling process is in, in each
// hierarchy, and is the program's own: the program never moves a process
// it did not start, never changes a cgroup it did not make, and removes
// its groups when their VM stops. The one write outside its own groups is
// the one cgroup v2 requires of anyone who makes a group with limits:
// adding the controllers to cgroup.subtree_control of the parent, where
// they are not there yet (none is ever removed).
package cgroup

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
)

// The controllers a VM's group needs, by their v1 names: memory and pids
// bound what it takes, cpu its share and time. I/O weights (blkio in v1,
// io in v2) are set where the kernel has them.
var required = []string{"memory", "pids", "cpu"}

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct {
	mount       string   // where it is mounted
	root        string   // the cgroup shown at mount (mountinfo's root: "/" but in some containers)
	controllers []string // v1: the controllers mounted there (cpu,cpuacct: both); v2: nil
}

// dir is the directory of the cgroup path (as /proc/PID/cgroup names it)
// in h, or "" if h does not show that cgroup.
func (h hierarchy) dir(path string) string {
	rel, ok := strings.CutPrefix(path, h.root)
	if !ok || h.root != "/" && rel != "" && !strings.HasPrefix(rel, "/") {
		return ""
	}
	return filepath.Join(h.mount, rel)
}

// System is the cgroup hierarchies this process sees.
type System struct {
	v       version
	unified *hierarchy           // v2
	byCtl   map[string]hierarchy // v1: controller -> hierarchy
}

// V2 reports whether the system is cgroup v2.
func (s *System) V2() bool { return s.unified != nil }

// Read reads the hierarchies from /proc/self/mountinfo.
func Read() (*System, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading cgroup mounts: %w", err)
	}
	defer f.Close()
	return parseMounts(f, func(mount string) []string {
		b, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers")) // missing: none
		return strings.Fields(string(b))
	})
}

// parseMounts reads the cgroup mounts of a mountinfo. controllersOf
// reads the controllers a cgroup2 mount's root offers.
func parseMounts(r io.Reader, controllersOf func(mount string) []string) (*System, error) {
	s := &System{byCtl: map[string]hierarchy{}}
	var unified []hierarchy
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 34 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		h := hierarchy{mount: mountinfo.Unescape(f[4]), root: mountinfo.Unescape(f[3])}
		switch g[0] {
		case "cgroup2":
			unified = append(unified, h)
		case "cgroup":
			for _, opt := range strings.Split(g[2], ",") {
				if slices.Contains([]string{"memory", "pids", "cpu", "cpuacct", "blkio"}, opt) {
					h.controllers = append(h.controllers, opt)
				}
			}
			for _, c := range h.controllers {
				if _, seen := s.byCtl[c]; !seen {
					s.byCtl[c] = h
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading cgroup mounts: %w", err)
	}
	for i := range unified {
		if slices.Contains(controllersOf(unified[i].mount), "memory") {
			s.unified, s.byCtl, s.v = &unified[i], nil, v2{}
			return s, nil
		}
	}
	if len(s.byCtl) == 0 {
		return nil, errors.New("this host has no cgroup hierarchy with the memory controller mounted (neither cgroup v2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/memory)")
	}
	s.v = v1{}
	return s, nil
}

// paths reads /proc/PID/cgroup (or /proc/self/cgroup): the cgroup path
// of each v1 controller, and of the unified hierarchy under "".
func paths(pid string) (map[string]string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return nil, err
	}
	return parsePaths(string(b)), nil
}

func parsePaths(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		// "4:memory:/process_api/x", "5:cpu,cpuacct:/", "0::/user.slice"
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

// Group is one cgroup: a directory in the unified hierarchy (v2), or one
// in the hierarchy of each controller (v1).
type Group struct {
	sys  *System
	dirs map[string]string // controller (v1 name) -> directory; in v2 the same for all
}

// Dir is the group's directory for controller ("memory", "pids", "cpu",
// "blkio"), "" if it has none.
func (g *Group) Dir(controller string) string { return g.dirs[controller] }

// Dirs are the group's directories, sorted, each once.
func (g *Group) Dirs() []string {
	var out []string
	for _, d := range g.dirs {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// String names the group as a person finds it: its directory (v2), or
// its memory controller's (v1).
func (g *Group) String() string { return g.dirs["memory"] }

// Of returns the cgroup the process pid is in, as this process sees it.
func Of(pid int) (*Group, error) { return ofProc(strconv.Itoa(pid)) }

// Self returns the cgroup this process is in.
func Self() (*Group, error) { return ofProc("self") }

func ofProc(pid string) (*Group, error) {
	sys, err := Read()
	if err != nil {
		return nil, err
	}
	p, err := paths(pid)
	if err != nil {
		return nil, fmt.Errorf("reading the cgroup of process %s: %w", pid, err)
	}
	return sys.group(p, "")
}

// group is the group at the paths of a process, or its child called
// child (when not "").
func (s *System) group(p map[string]string, child string) (*Group, error) {
	g := &Group{sys: s, dirs: map[string]string{}}
	add := func(ctl string, h hierarchy, path string) error {
		d := h.dir(path)
		if d == "" {
			return fmt.Errorf("the cgroup %s of the %s controller is outside its mount %s (root %s)", path, ctl, h.mount, h.root)
		}
		if child != "" {
			d = filepath.Join(d, child)
		}
		g.dirs[ctl] = d
		return nil
	}
	if s.unified != nil {
		path, ok := p[""]
		if !ok {
			return nil, errors.New("this process is in no cgroup of the unified hierarchy")
		}
		for _, c := range append(slices.Clone(required), "blkio") {
			if err := add(c, *s.unified, path); err != nil {
				return nil, err
			}
		}
		return g, nil
	}
	for _, c := range append(slices.Clone(required), "blkio") {
		h, ok := s.byCtl[c]
		if !ok {
			continue
		}
		path, ok := p[c]
		if !ok {
			return nil, fmt.Errorf("this process is in no cgroup of the %s controller", c)
		}
		if err := add(c, h, path); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Create makes the group called name below the cgroup this process is in,
// with the limits l, and returns it. A group of that name left from
// before must be empty (End empties it): it is made again, with l.
func Create(name string, l config.Limits) (*Group, error) {
	sys, err := Read()
	if err != nil {
		return nil, err
	}
	p, err := paths("self")
	if err != nil {
		return nil, fmt.Errorf("reading this process's cgroup: %w", err)
	}
	return sys.create(p, name, l)
}

func (s *System) create(p map[string]string, name string, l config.Limits) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\n") || name == "." || name == ".." {
		return nil, fmt.Errorf("%q cannot name a cgroup", name)
	}
	for _, c := range required {
		if s.unified == nil {
			if _, ok := s.byCtl[c]; !ok {
				return nil, fmt.Errorf("making cgroup %s: this host has no cgroup v1 hierarchy with the %s controller", name, c)
			}
		}
	}
	g, err := s.group(p, name)
	if err != nil {
		return nil, fmt.Errorf("making cgroup %s: %w", name, err)
	}
	if s.unified != nil {
		if err := s.delegate(filepath.Dir(g.dirs["memory"])); err != nil {
			return nil, fmt.Errorf("making cgroup %s: %w", name, err)
		}
	}
	for _, d := range g.Dirs() {
		if err := os.Mkdir(d, 0o755); errors.Is(err, os.ErrExist) {
			// Left by a keeper that was killed: empty, or End failed.
			if procs, _ := readPids(filepath.Join(d, "cgroup.procs")); len(procs) > 0 {
				return nil, fmt.Errorf("making cgroup %s: %s exists with processes in it (%v)", name, d, procs)
			}
			if err := rmdir(d); err != nil {
				return nil, fmt.Errorf("making cgroup %s anew: %w", name, err)
			}
			err = os.Mkdir(d, 0o755)
		}
		if err != nil {
			return nil, fmt.Errorf("making cgroup %s: %w", name, err)
		}
	}
	if err := g.set(l); err != nil {
		g.Remove()
		return nil, err
	}
	return g, nil
}

// delegate adds the controllers a VM's group needs (and io, where the
// kernel has it) to parent's cgroup.subtree_control, where they are not
// yet: cgroup v2 gives a child only the controllers its parent enables.
func (s *System) delegate(parent string) error {
	have, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return err
	}
	on, err := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	var add []string
	for _, c := range []string{"memory", "pids", "cpu", "io"} {
		switch {
		case slices.Contains(strings.Fields(string(on)), c):
		case slices.Contains(strings.Fields(string(have)), c):
			add = append(add, "+"+c)
		case c != "io":
			return fmt.Errorf("the cgroup %s does not offer the %s controller (its cgroup.controllers: %q)", parent, c, strings.TrimSpace(string(have)))
		}
	}
	if len(add) == 0 {
		return nil
	}
	err = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0o644)
	if errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("cgroup v2 gives VMs limits only below a cgroup that enables the memory, pids and cpu controllers for its children, which the kernel refuses for %s: it holds processes of its own, and is not the root. Start microvm from the root cgroup, or from a cgroup without processes whose controllers are delegated (as systemd-run --scope -p Delegate=yes makes one)", parent)
	}
	if err != nil {
		return fmt.Errorf("enabling %s in %s/cgroup.subtree_control: %w", strings.Join(add, " "), parent, err)
	}
	return nil
}

// set writes the limits l, in the order its version gives.
func (g *Group) set(l config.Limits) error {
	for _, s := range g.sys.v.settings(l) {
		d := g.dirs[s.ctl]
		if d == "" {
			if s.optional {
				continue
			}
			return fmt.Errorf("setting %s: no %s controller", s.file, s.ctl)
		}
		p := filepath.Join(d, s.file)
		if s.optional {
			if _, err := os.Stat(p); err != nil {
				continue // the kernel has no such file here: swap accounting off, no I/O weights
			}
		}
		if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil {
			if s.optional {
				continue // a weight the scheduler does not take
			}
			return fmt.Errorf("setting %s of cgroup %s to %s: %w", s.file, d, s.value, err)
		}
	}
	return nil
}

// Add moves the process pid into the group (in every hierarchy).
func (g *Group) Add(pid int) error {
	for _, d := range g.Dirs() {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving process %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// Procs are the processes in the group (its pids controller's view; in
// v2 the group's), as this process's pid namespace numbers them. A group
// that is gone has none.
func (g *Group) Procs() ([]int, error) {
	d := g.dirs["pids"]
	if d == "" {
		d = g.dirs["memory"]
	}
	p, err := readPids(filepath.Join(d, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return p, err
}

func readPids(file string) ([]int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// Kill kills every process in the group (SIGKILL) and waits until none is
// left, for up to timeout: with cgroup.kill where the kernel has it (v2,
// Linux 5.14), otherwise process by process until the group is empty, a
// process that forks meanwhile being bounded by pids.max.
func (g *Group) Kill(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d := g.dirs["pids"]; g.sys.unified != nil && d != "" {
		// Written once: every process, and any it forks meanwhile.
		_ = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0o644) // missing before 5.14: the loop below does it
	}
	for {
		procs, err := g.Procs()
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still has processes %v after %s", g, procs, timeout)
		}
		for _, pid := range procs {
			_ = syscall.Kill(pid, syscall.SIGKILL) // gone already: the next read says so
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Remove removes the group's directories, which must be empty of
// processes. One that is gone already is no error.
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.Dirs() {
		if err := rmdir(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// rmdir removes a cgroup directory, waiting a moment for processes just
// killed to leave it (the kernel refuses with EBUSY until then).
func rmdir(d string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(d)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// End kills whatever runs in the group and removes it.
func (g *Group) End() error {
	if err := g.Kill(10 * time.Second); err != nil {
		return err
	}
	return g.Remove()
}

// Use is what a group's processes take, and its limits.
type Use struct {
	MemoryBytes, MemoryMax int64 // MemoryMax 0: none
	MemoryPeak             int64 // the most it took since it was made; 0 where the kernel does not say (v2 before 5.19)
	Pids, PidsMax          int   // PidsMax 0: none
	OOMKills               int   // processes the kernel killed for the group's memory limit (since the group was made)
}

// Use reads the group's use and limits.
func (g *Group) Use() (Use, error) {
	var u Use
	var err error
	read := func(ctl, file string) string {
		if err != nil {
			return ""
		}
		b, e := os.ReadFile(filepath.Join(g.dirs[ctl], file))
		err = e
		return strings.TrimSpace(string(b))
	}
	f := g.sys.v.files()
	u.MemoryBytes = number(read("memory", f.memory))
	u.MemoryMax = limit(read("memory", f.memoryMax))
	u.OOMKills = int(field(read("memory", f.oom), "oom_kill"))
	if b, err := os.ReadFile(filepath.Join(g.dirs["memory"], f.memoryPeak)); err == nil {
		u.MemoryPeak = number(strings.TrimSpace(string(b)))
	}
	u.Pids = int(number(read("pids", "pids.current")))
	u.PidsMax = int(limit(read("pids", "pids.max")))
	if err != nil {
		return Use{}, fmt.Errorf("reading the use of cgroup %s: %w", g, err)
	}
	return u, nil
}

func number(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// limit reads a limit file: "max" (v2) or v1's largest page-aligned
// number, which stand for none, are 0.
func limit(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n >= 1<<62 {
		return 0
	}
	return n
}

// field is the number after key in a flat-keyed file such as
// memory.events ("oom_kill 2").
func field(s, key string) int64 {
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			return number(v)
		}
	}
	return 0
}

// record is how a group is written down, for a command that finds it
// from another cgroup (Record, Load).
type record struct {
	V2   bool              `json:"v2"`
	Dirs map[string]string `json:"dirs"`
}

// Record is the group written down, for Load.
func (g *Group) Record() ([]byte, error) {
	return json.Marshal(record{V2: g.sys.V2(), Dirs: g.dirs})
}

// Load reads a group that Record wrote, named name. It takes only
// directories called name inside the hierarchies of this host's cgroup
// version, each for its own controller.
func Load(data []byte, name string) (*Group, error) {
	sys, err := Read()
	if err != nil {
		return nil, err
	}
	return sys.load(data, name)
}

func (s *System) load(data []byte, name string) (*Group, error) {
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("reading the record of cgroup %s: %w", name, err)
	}
	if r.V2 != s.V2() || len(r.Dirs) == 0 {
		return nil, fmt.Errorf("the record of cgroup %s is not of this host's cgroups", name)
	}
	g := &Group{sys: s, dirs: map[string]string{}}
	for ctl, d := range r.Dirs {
		h := s.unified
		if h == nil {
			if hh, ok := s.byCtl[ctl]; ok {
				h = &hh
			}
		}
		if h == nil || !filepath.IsAbs(d) || filepath.Clean(d) != d || filepath.Base(d) != name || !strings.HasPrefix(d, filepath.Clean(h.mount)+"/") {
			return nil, fmt.Errorf("the record of cgroup %s names %q for %s, which is not a cgroup of that name", name, d, ctl)
		}
		g.dirs[ctl] = d
	}
	return g, nil
}
