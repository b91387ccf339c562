package cgroup

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// Mount tables of the three kinds of host, as /proc/self/mountinfo has
// them.
const (
	// The machine the tests run on: v1 controllers, a unified hierarchy
	// without any.
	hybridMounts = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 30 0:34 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	hybridCgroup = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n4:memory:/process_api/da57\n1:cpu:/\n0::/\n"
	// Debian 12: cgroup v2 only.
	unifiedMounts = `25 21 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	unifiedCgroup = "0::/user.slice/user-0.slice/session-3.scope\n"
	// An older host: cpu and cpuacct mounted together.
	legacyMounts = `25 21 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
26 21 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
27 21 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
`
	legacyCgroup = "3:pids:/keep\n2:memory:/keep\n1:cpu,cpuacct:/keep\n"
)

func TestParse(t *testing.T) {
	controllers := func(mount string) []string {
		if mount == "/sys/fs/cgroup" {
			return []string{"cpuset", "cpu", "io", "memory", "pids"}
		}
		return nil // the hybrid host's unified hierarchy
	}
	for _, tc := range []struct {
		name, mounts, cgroup string
		v2                   bool
		dirs                 map[string]string
	}{
		{"hybrid", hybridMounts, hybridCgroup, false, map[string]string{
			"memory": "/sys/fs/cgroup/memory/process_api/da57/microvm-vm1",
			"pids":   "/sys/fs/cgroup/pids/microvm-vm1",
			"cpu":    "/sys/fs/cgroup/cpu/microvm-vm1",
			"blkio":  "/sys/fs/cgroup/blkio/microvm-vm1",
		}},
		{"unified", unifiedMounts, unifiedCgroup, true, map[string]string{
			"memory": "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope/microvm-vm1",
			"pids":   "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope/microvm-vm1",
			"cpu":    "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope/microvm-vm1",
			"blkio":  "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope/microvm-vm1",
		}},
		{"legacy", legacyMounts, legacyCgroup, false, map[string]string{
			"memory": "/sys/fs/cgroup/memory/keep/microvm-vm1",
			"pids":   "/sys/fs/cgroup/pids/keep/microvm-vm1",
			"cpu":    "/sys/fs/cgroup/cpu,cpuacct/keep/microvm-vm1",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseMounts(strings.NewReader(tc.mounts), controllers)
			if err != nil {
				t.Fatal(err)
			}
			if s.V2() != tc.v2 {
				t.Errorf("v2 = %v, want %v", s.V2(), tc.v2)
			}
			g, err := s.group(parsePaths(tc.cgroup), "microvm-vm1")
			if err != nil {
				t.Fatal(err)
			}
			for ctl, want := range tc.dirs {
				if got := g.Dir(ctl); got != want {
					t.Errorf("%s: %s, want %s", ctl, got, want)
				}
			}
			if len(g.dirs) != len(tc.dirs) {
				t.Errorf("dirs %v, want %v", g.dirs, tc.dirs)
			}
		})
	}
	if _, err := parseMounts(strings.NewReader("25 21 0:23 / /sys rw - sysfs sysfs rw\n"), controllers); err == nil {
		t.Error("a host without cgroups parsed")
	}
}

// A container whose cgroup mount shows its own cgroup at the mount point.
func TestContainerRoot(t *testing.T) {
	h := hierarchy{mount: "/sys/fs/cgroup", root: "/docker/abc"}
	for path, want := range map[string]string{
		"/docker/abc":       "/sys/fs/cgroup",
		"/docker/abc/inner": "/sys/fs/cgroup/inner",
		"/docker/abcdef":    "",
		"/other":            "",
	} {
		if got := h.dir(path); got != want {
			t.Errorf("dir(%q) = %q, want %q", path, got, want)
		}
	}
}

var limits = config.Limits{MemoryMiB: 704, Pids: 528, CPUWeight: 200, CPUMax: 150, IOWeight: 300}

// readAll maps each file under dir to its content.
func readAll(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			out[rel] = string(b)
		}
		return nil
	})
	return out
}

// TestCreateV2 writes a group into a fake unified hierarchy: the
// controllers enabled in the parent, the limits in the group's files.
func TestCreateV2(t *testing.T) {
	root := t.TempDir()
	parent := filepath.Join(root, "services")
	os.MkdirAll(parent, 0o755)
	os.WriteFile(filepath.Join(parent, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("cpu\n"), 0o644)
	s := &System{v: v2{}, unified: &hierarchy{mount: root, root: "/"}}
	g, err := s.create(map[string]string{"": "/services"}, "microvm-vm1", limits)
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, root)
	want := map[string]string{
		"services/cgroup.controllers":     "cpuset cpu io memory pids\n",
		"services/cgroup.subtree_control": "+memory +pids +io", // cpu was on: only what is missing is added
		"services/microvm-vm1/memory.max": "738197504",
		"services/microvm-vm1/pids.max":   "528",
		"services/microvm-vm1/cpu.weight": "200",
		"services/microvm-vm1/cpu.max":    "150000 100000",
	}
	for f, w := range want {
		if got[f] != w {
			t.Errorf("%s = %q, want %q", f, got[f], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("files %v, want %v", got, want)
	}
	if dirs := g.Dirs(); len(dirs) != 1 || dirs[0] != filepath.Join(parent, "microvm-vm1") {
		t.Errorf("dirs %v", dirs)
	}

	// The files the kernel has only sometimes are written where they are.
	for _, f := range []string{"memory.swap.max", "io.weight", "io.bfq.weight"} {
		os.WriteFile(filepath.Join(g.Dir("memory"), f), nil, 0o644)
	}
	if err := g.set(config.Limits{MemoryMiB: 128, Pids: 10, CPUWeight: 100, IOWeight: 50}); err != nil {
		t.Fatal(err)
	}
	got = readAll(t, g.Dir("memory"))
	for f, w := range map[string]string{"memory.swap.max": "0", "io.weight": "default 50", "io.bfq.weight": "50", "cpu.max": "max 100000"} {
		if got[f] != w {
			t.Errorf("%s = %q, want %q", f, got[f], w)
		}
	}

	// A parent that offers no memory controller gives no group.
	os.WriteFile(filepath.Join(parent, "cgroup.controllers"), []byte("cpu pids\n"), 0o644)
	if _, err := s.create(map[string]string{"": "/services"}, "microvm-vm2", limits); err == nil || !strings.Contains(err.Error(), "memory") {
		t.Errorf("create without the memory controller: %v", err)
	}
}

// TestCreateV1 writes a group into fake v1 hierarchies, one per
// controller.
func TestCreateV1(t *testing.T) {
	root := t.TempDir()
	s := &System{v: v1{}, byCtl: map[string]hierarchy{}}
	for _, c := range []string{"memory", "pids", "cpu", "blkio"} {
		os.MkdirAll(filepath.Join(root, c, "keep"), 0o755)
		s.byCtl[c] = hierarchy{mount: filepath.Join(root, c), root: "/", controllers: []string{c}}
	}
	if _, err := s.create(map[string]string{"memory": "/keep", "pids": "/keep", "cpu": "/keep", "blkio": "/keep"}, "microvm-vm1", limits); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, root)
	want := map[string]string{
		"memory/keep/microvm-vm1/memory.limit_in_bytes": "738197504",
		"pids/keep/microvm-vm1/pids.max":                "528",
		"cpu/keep/microvm-vm1/cpu.shares":               "2048",
		"cpu/keep/microvm-vm1/cpu.cfs_period_us":        "100000",
		"cpu/keep/microvm-vm1/cpu.cfs_quota_us":         "150000",
	}
	for f, w := range want {
		if got[f] != w {
			t.Errorf("%s = %q, want %q", f, got[f], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("files %v, want %v", got, want)
	}
	delete(s.byCtl, "pids")
	if _, err := s.create(map[string]string{"memory": "/keep", "cpu": "/keep"}, "microvm-vm2", limits); err == nil || !strings.Contains(err.Error(), "pids") {
		t.Errorf("create without the pids controller: %v", err)
	}
}

func TestRecord(t *testing.T) {
	s, err := parseMounts(strings.NewReader(hybridMounts), func(string) []string { return nil })
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.group(parsePaths(hybridCgroup), "microvm-vm1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := g.Record()
	if err != nil {
		t.Fatal(err)
	}
	back, err := s.load(b, "microvm-vm1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(back.Dirs(), " ") != strings.Join(g.Dirs(), " ") {
		t.Errorf("loaded %v, want %v", back.Dirs(), g.Dirs())
	}
	for _, bad := range []string{
		`{"v2": false, "dirs": {"memory": "/etc/microvm-vm1"}}`,
		`{"v2": false, "dirs": {"memory": "/sys/fs/cgroup/memory/microvm-vm2"}}`,
		`{"v2": false, "dirs": {"memory": "/sys/fs/cgroup/memory/../../../etc/microvm-vm1"}}`,
		`{"v2": false, "dirs": {"memory": "/sys/fs/cgroup/pids/microvm-vm1"}}`,
		`{"v2": true, "dirs": {"memory": "/sys/fs/cgroup/memory/microvm-vm1"}}`,
		`{"v2": false, "dirs": {}}`,
		`not json`,
	} {
		if _, err := s.load([]byte(bad), "microvm-vm1"); err == nil {
			t.Errorf("loaded %s", bad)
		}
	}
}

// testGroup makes a real group below this process's cgroup with limits l,
// removed when the test ends.
func testGroup(t *testing.T, l config.Limits) *Group {
	t.Helper()
	testenv.NeedRoot(t)
	name := "microvm-test-" + strconv.Itoa(os.Getpid())
	g, err := Create(name, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.End(); err != nil {
			t.Error(err)
		}
		for _, d := range g.Dirs() {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("%s is still there: %v", d, err)
			}
		}
	})
	return g
}

// gated starts a shell script in g: it waits for its standard input to
// close, which happens once it is in the group.
func gated(t *testing.T, g *Group, script string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read go; "+script)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	in.Close()
	return cmd, bufio.NewScanner(out)
}

// TestPidsReal: a process in a real group (cgroup v1 on the test
// machines, v2 on current hosts) cannot fork past pids.max, and Kill ends
// it and every child it made.
func TestPidsReal(t *testing.T) {
	g := testGroup(t, config.Limits{MemoryMiB: 256, Pids: 16, CPUWeight: 100, IOWeight: 100})
	cmd, out := gated(t, g, `n=0; while [ $n -lt 100 ]; do sleep 600 >/dev/null & n=$((n+1)); echo $n; done`)
	last := 0
	for out.Scan() {
		last, _ = strconv.Atoi(out.Text())
	}
	cmd.Wait() // the shell dies of the failed fork ("Cannot fork"); its children stay
	// The shell and its 15 children: 16 processes.
	if last != 15 {
		t.Errorf("the shell forked %d children; pids.max 16 allows it 15", last)
	}
	procs, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) != 15 {
		t.Errorf("%d processes in the group, want the 15 sleeps", len(procs))
	}
	if u, err := g.Use(); err != nil || u.PidsMax != 16 || u.Pids != 15 {
		t.Errorf("use: %+v, %v; want 15 of 16 pids", u, err)
	}
	if err := g.Kill(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if procs, _ := g.Procs(); len(procs) != 0 {
		t.Errorf("after Kill: %v", procs)
	}
}

// TestMemoryReal: a process that takes more memory than the group's limit
// is killed by the kernel, and the group counts the kill.
func TestMemoryReal(t *testing.T) {
	g := testGroup(t, config.Limits{MemoryMiB: 64, Pids: 16, CPUWeight: 100, IOWeight: 100})
	if u, err := g.Use(); err != nil || u.MemoryMax != 64<<20 || u.OOMKills != 0 {
		t.Fatalf("use before: %+v, %v", u, err)
	}
	// 128 MiB held in the shell's memory (a variable), twice the limit.
	cmd, _ := gated(t, g, `x=$(head -c 134217728 /dev/zero | tr '\0' a); echo ${#x}`)
	err := cmd.Wait()
	if err == nil {
		t.Fatal("the shell held 128 MiB under a limit of 64 MiB")
	}
	u, uerr := g.Use()
	if uerr != nil || u.OOMKills == 0 {
		t.Errorf("after %v: use %+v, %v; want an OOM kill counted", err, u, uerr)
	}
}

// TestKillV2Real: on a host whose unified hierarchy has no controllers
// (the test machines), a group there still holds processes: Kill empties
// it and Remove removes it, as on a host with cgroup v2 only.
func TestKillV2Real(t *testing.T) {
	testenv.NeedRoot(t)
	const mount = "/sys/fs/cgroup/unified"
	if s, err := Read(); err == nil && s.V2() {
		t.Skip("cgroup v2 with controllers: TestPidsReal and TestMemoryReal run on it")
	}
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		testenv.Unavailable(t, "no cgroup v2 hierarchy at "+mount)
	}
	p, err := paths("self")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, p[""], "microvm-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g := &Group{sys: &System{v: v2{}, unified: &hierarchy{mount: mount, root: "/"}}, dirs: map[string]string{"pids": dir, "memory": dir}}
	defer g.Remove()
	cmd, out := gated(t, g, `sleep 600 >/dev/null & sleep 600 >/dev/null & echo started; wait`)
	out.Scan()
	if procs, _ := g.Procs(); len(procs) != 3 {
		t.Errorf("%d processes in the group, want the shell and two sleeps", len(procs))
	}
	if err := g.Kill(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", dir, err)
	}
}
