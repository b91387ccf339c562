package metrics

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// cgroupMounts finds the hierarchies the test can use: the cgroup v2
// mount, and v1's memory and cpuacct ones ("" where there is none).
func cgroupMounts(t *testing.T) (v2, memory, cpuacct string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if !ok || len(a) < 5 || len(b) < 3 {
			continue
		}
		switch {
		case b[0] == "cgroup2" && v2 == "":
			v2 = a[4]
		case b[0] == "cgroup" && strings.Contains(","+b[2]+",", ",memory,"):
			memory = a[4]
		case b[0] == "cgroup" && strings.Contains(","+b[2]+",", ",cpuacct,"):
			cpuacct = a[4]
		}
	}
	return v2, memory, cpuacct
}

// group makes a cgroup under mount for the test, removed at its end.
func group(t *testing.T, mount string) string {
	id := make([]byte, 3)
	rand.Read(id)
	dir := filepath.Join(mount, "microvm-metrics-test-"+hex.EncodeToString(id))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond) // its last process is still going
		}
	})
	return dir
}

// TestCgroupDirs reads a real cgroup (v2 where it has the memory
// controller, else v2 for the CPU and v1 for the memory, as on hybrid
// hosts; v1's cpuacct too where it is mounted) with a process in it that
// burns CPU and holds memory.
func TestCgroupDirs(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "sh")
	v2, memory, cpuacct := cgroupMounts(t)
	if v2 == "" {
		testenv.Unavailable(t, "needs a cgroup v2 mount")
	}
	cpuDir := group(t, v2)
	memDir := cpuDir
	if b, _ := os.ReadFile(filepath.Join(v2, "cgroup.controllers")); !strings.Contains(string(b), "memory") {
		if memory == "" {
			testenv.Unavailable(t, "needs the memory controller, in cgroup v2 or v1")
		}
		memDir = group(t, memory)
	}
	var acctDir string
	if cpuacct != "" {
		acctDir = group(t, cpuacct)
	}
	// The process moves itself into the groups, then burns CPU.
	script := fmt.Sprintf("echo $$ > %s/cgroup.procs", cpuDir)
	if memDir != cpuDir {
		script += fmt.Sprintf(" && echo $$ > %s/cgroup.procs", memDir)
	}
	if acctDir != "" {
		script += fmt.Sprintf(" && echo $$ > %s/cgroup.procs", acctDir)
	}
	cmd := exec.Command("sh", "-c", script+" && x=$(head -c 4000000 /dev/zero | tr '\\0' a) && while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Until the process took 200 ms of CPU, as /proc says (on a busy
	// machine that takes longer than 200 ms).
	var own time.Duration
	for deadline := time.Now().Add(30 * time.Second); own < 200*time.Millisecond; time.Sleep(50 * time.Millisecond) {
		pt, err := readProcs("/proc")
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("the process took %s of CPU in 30 s (%v)", own, err)
		}
		own = pt.cpu(pt.tree(cmd.Process.Pid, pt.procs[cmd.Process.Pid].start))
	}

	for _, g := range []struct {
		name string
		dirs CgroupDirs
	}{{"v2 CPU", CgroupDirs{CPU: cpuDir, Memory: memDir}}, {"v1 cpuacct", CgroupDirs{CPU: acctDir, Memory: memDir}}} {
		if g.dirs.CPU == "" {
			continue
		}
		cpu, mem, err := g.dirs.Usage()
		if err != nil {
			t.Errorf("%s: %v", g.name, err)
			continue
		}
		// All of the group's CPU is its one process's (and what its
		// short-lived children took), read a moment later.
		if cpu < own-10*time.Millisecond || cpu > own+2*time.Second {
			t.Errorf("%s: CPU %s; its process took %s", g.name, cpu, own)
		}
		if mem < 1<<20 {
			t.Errorf("%s: memory %d; the process holds more than 4 MB", g.name, mem)
		}
	}
	if _, _, err := (CgroupDirs{CPU: t.TempDir(), Memory: memDir}).Usage(); err == nil {
		t.Error("a directory that is no cgroup reads as one")
	}
}
