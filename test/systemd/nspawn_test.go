package systemd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// A container is systemd as PID 1 in systemd-nspawn, booted from root, an
// overlay of this machine's own root: the same OS, with its own mount,
// PID, UTS, IPC and network namespaces. Its network namespace is one the
// test made with package sandbox, so it has an uplink to a simulated
// internet and nothing of the machine's network; a fresh one at each boot
// is a fresh kernel network state, as after a host's reboot. The test
// drives it with nsenter, as a person at its console would.
type container struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan struct{}
	code int // nspawn's exit status: 0 after poweroff, 133 after reboot
	pid1 int // systemd, as the machine sees it
}

// overlay mounts an overlay of / at DIR/root whose upper layer is a tmpfs
// of the test's, so that everything the container writes (its /etc, VM
// data) lives there and survives the container's reboot, and nothing of it
// reaches the machine. It returns DIR/root; the test's end unmounts both.
func overlay(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mvs")
	if err != nil {
		t.Fatal(err)
	}
	layer, root := filepath.Join(dir, "layer"), filepath.Join(dir, "root")
	for _, d := range []string{layer, root} {
		os.Mkdir(d, 0o755)
	}
	mount := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %s: %s %v", strings.Join(args, " "), out, err)
		}
	}
	mount("-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs", layer)
	t.Cleanup(func() {
		// Lazily, so that nothing is ever removed through the overlay
		// (whose lower layer is the machine's root); then only empty
		// directories are removed.
		exec.Command("umount", "-l", root).Run()
		exec.Command("umount", "-l", layer).Run()
		os.Remove(root)
		os.Remove(layer)
		os.Remove(dir)
	})
	for _, d := range []string{"upper", "work"} {
		os.Mkdir(filepath.Join(layer, d), 0o755)
	}
	mount("-t", "overlay", "overlay", "-o", "lowerdir=/,upperdir="+layer+"/upper,workdir="+layer+"/work", root)
	return root
}

// boot starts systemd-nspawn on root in network namespace netns, with
// binds ("SRC:DST", read-only unless they end in ":rw"), its console in
// console, and waits until systemd has finished booting.
func boot(t *testing.T, root, netns, console string, binds ...string) *container {
	t.Helper()
	// --private-network beside the namespace makes /proc/sys/net writable
	// in the container, as apply needs for forwarding.
	args := []string{"-D", root, "--boot", "--register=no", "--keep-unit", "--network-namespace-path=/run/netns/" + netns, "--private-network", "--console=read-only"}
	for _, b := range binds {
		if rw, ok := strings.CutSuffix(b, ":rw"); ok {
			args = append(args, "--bind="+rw)
		} else {
			args = append(args, "--bind-ro="+b)
		}
	}
	log, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := &container{t: t, cmd: exec.Command("systemd-nspawn", args...), done: make(chan struct{}), code: -1}
	c.cmd.Stdout, c.cmd.Stderr = log, log
	if err := c.cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		err := c.cmd.Wait()
		var exit *exec.ExitError
		switch {
		case err == nil:
			c.code = 0
		case errors.As(err, &exit):
			c.code = exit.ExitCode()
		}
		log.Close()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			c.run("systemctl", "poweroff")
			if c.wait(2*time.Minute) < 0 {
				c.cmd.Process.Kill()
				<-c.done
			}
		}
	})
	// systemd is nspawn's child, once nspawn has set the namespaces up.
	began := time.Now()
	for c.pid1 == 0 {
		if pid := childOf(c.cmd.Process.Pid); pid > 0 {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				c.pid1 = pid
			}
		}
		select {
		case <-c.done:
			b, _ := os.ReadFile(console)
			t.Fatalf("systemd-nspawn exited (%d) before systemd ran:\n%s", c.code, supervise.Tail(b, 20))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(began) > time.Minute {
			t.Fatal("no systemd in the container a minute after systemd-nspawn started")
		}
	}
	for {
		out, _ := c.run("systemctl", "is-system-running", "--wait")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			break
		}
		if time.Since(began) > 3*time.Minute {
			t.Fatalf("the container has not finished booting after 3 minutes: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the container booted in %s", time.Since(began).Round(100*time.Millisecond))
	return c
}

// childOf finds a child process of pid.
func childOf(pid int) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(pid) {
				return child
			}
		}
	}
	return 0
}

// run runs a command in the container, as root at its console would, and
// returns its output.
func (c *container) run(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-m", "-u", "-i", "-n", "-p", "--",
		"env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is run, failing the test when the command fails.
func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("in the container, %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// wait waits up to timeout for nspawn to exit and returns its status, or
// -1 if it is still running.
func (c *container) wait(timeout time.Duration) int {
	select {
	case <-c.done:
		return c.code
	case <-time.After(timeout):
		return -1
	}
}
