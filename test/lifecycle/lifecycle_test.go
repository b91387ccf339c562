// Package lifecycle tests the daily operations on real microVMs under QEMU,
// in a sandbox of network namespaces: up, status, ssh, check, a VMM killed
// and restarted by the detached keeper with /var intact, update, down, and
// the errors that change nothing.
package lifecycle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// config writes an infra.toml of two VMs for this machine (QEMU under TCG),
// with vm-specific extra lines.
func writeConfig(t *testing.T, path, stateDir, runDir string, extra map[string]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\n", stateDir, runDir)
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n")
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("lc%d", i)
		fmt.Fprintf(&b, "[vm.%s]\nsubnet = \"10.%d.0.0/24\"\n%s\n", name, i, extra[name])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

type result struct {
	out  string
	code int
}

func TestLifecycle(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go", "ping")
	host := imagetest.Debian(t)
	run := testenv.RunDir(t, "mvl")
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	writeConfig(t, file, host.StateDir, run, nil)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range in.VMs {
		storage.RemoveState(vm.StateDir)
	}
	bin := testenv.Binaries(t)
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	mvm := func(args ...string) result {
		t.Helper()
		out, err := sandbox.Command(sb.Host, bin, args...).CombinedOutput()
		var exit *exec.ExitError
		code := 0
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("microvm %s: %v", strings.Join(args, " "), err)
		}
		// On a host without project quotas plan and apply warn that the
		// disk limits are not enforced (storage tests that).
		return result{testenv.WithoutDiskWarning(string(out)), code}
	}
	// Whatever happens, no keeper outlives the test.
	defer func() {
		for i := range in.VMs {
			supervise.StopDetached(&in.VMs[i], 90*time.Second)
		}
		if t.Failed() {
			for _, vm := range in.VMs {
				sup, _ := os.ReadFile(vm.SupervisorLog())
				con, _ := os.ReadFile(vm.ConsoleLog())
				t.Logf("%s supervisor log:\n%s\n%s console (end):\n%s", vm.Name, supervise.Tail(sup, 30), vm.Name, supervise.Tail(con, 20))
			}
		}
	}()
	if r := mvm("apply", "--host-only", "-f", file); r.code != 0 {
		t.Fatalf("apply: %s", r.out)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	lc1, _ := in.VM("lc1")

	// Errors that change nothing: one line each, exit 1.
	wantErr := func(what, want string, args ...string) {
		t.Helper()
		r := mvm(args...)
		if r.code != 1 || !strings.Contains(r.out, want) || strings.Count(strings.TrimSpace(r.out), "\n") > 0 {
			t.Errorf("%s: exit %d, %q; want exit 1 and one line with %q", what, r.code, r.out, want)
		}
	}
	wantErr("down on a stopped VM", "lc1 is not running", "down", "-f", file, "lc1")
	missing := filepath.Join(dir, "missing-image.toml")
	writeConfig(t, missing, host.StateDir, run, map[string]string{"lc1": `image = "nosuch"`})
	wantErr("missing image", "image nosuch is not built", "up", "-f", missing, "lc1")
	if _, err := exec.LookPath("cloud-hypervisor"); err != nil {
		ch := filepath.Join(dir, "cloud-hypervisor.toml")
		writeConfig(t, ch, host.StateDir, run, map[string]string{"lc1": `hypervisor = "cloud-hypervisor"`})
		wantErr("missing VMM program", "cloud-hypervisor is not installed", "up", "-f", ch, "lc1")
	}
	if _, err := os.Stat(lc1.KeeperPidFile()); err == nil {
		t.Error("a failed up left a keeper pid file")
	}
	lock, err := supervise.TakeLock(in.Host)
	if err != nil {
		t.Fatal(err)
	}
	wantErr("up while another command holds the lock", "another microvm command is changing VMs", "up", "-f", file, "lc1")
	lock.Release()

	// up: both VMs, detached (this machine's PID 1 is not systemd), until
	// their guests are ready.
	began := time.Now()
	if r := mvm("up", "--all", "--wait", "-f", file); r.code != 0 {
		t.Fatalf("up: %s", r.out)
	} else {
		t.Logf("up --wait returned in %s:\n%s", time.Since(began).Round(100*time.Millisecond), r.out)
		for _, name := range []string{"lc1", "lc2"} {
			if !strings.Contains(r.out, name+" ready: sshd answers on ") {
				t.Errorf("up --wait does not say %s is ready", name)
			}
		}
	}
	wantErr("up on a running VM", "lc1 is already running", "up", "-f", file, "lc1")
	// As root at a prompt: a second supervisor of a running VM is refused
	// before it remakes the first's VMM directory (its sockets, its console).
	wantErr("run on a running VM", "lc1 is already running: another microvm run supervises it", "run", "-f", file, "lc1")
	if _, err := os.Stat(lc1.ControlSocket()); err != nil {
		t.Errorf("a refused run took the running VMM's control socket: %v", err)
	}
	for _, vm := range in.VMs {
		sandboxtest.Login(t, sb, &vm).Close()
	}
	t.Logf("both VMs answer SSH %s after up", time.Since(began).Round(100*time.Millisecond))

	t.Run("status", func(t *testing.T) {
		r := mvm("status", "-f", file)
		t.Logf("microvm status:\n%s", r.out)
		for _, line := range strings.Split(r.out, "\n")[1:] {
			if f := strings.Fields(line); len(f) > 2 && (f[1] != "running" || f[2] != "ready") {
				t.Errorf("%s is %s, its guest %s in status; want running and ready", f[0], f[1], f[2])
			}
		}
		r = mvm("status", "--json", "-f", file)
		var doc struct {
			Version int `json:"version"`
			VMs     []struct {
				Name   string `json:"name"`
				State  string `json:"state"`
				Guest  string `json:"guest"`
				Uptime int64  `json:"uptime_seconds"`
				Disk   int64  `json:"disk_bytes"`
			} `json:"vms"`
		}
		if err := json.Unmarshal([]byte(r.out), &doc); err != nil {
			t.Fatalf("status --json: %v\n%s", err, r.out)
		}
		if rows := doc.VMs; doc.Version != 1 || len(rows) != 2 || rows[0].State != "running" || rows[0].Guest != "ready" || rows[0].Uptime < 1 || rows[0].Disk == 0 {
			t.Errorf("status --json: %+v", doc)
		}
	})

	t.Run("info and exec", func(t *testing.T) {
		r := mvm("info", "lc1", "-f", file)
		t.Logf("microvm info lc1:\n%s", r.out)
		for _, want := range []string{"state      running since", "qemu pid ", "keeper pid ", "bridge br-lc1, TAP vm-lc1, MAC ", "nothing since it started"} {
			if !strings.Contains(r.out, want) {
				t.Errorf("info lc1 lacks %q", want)
			}
		}
		var info struct {
			State  string `json:"state"`
			VMMPid int    `json:"vmm_pid"`
			VM     struct {
				Address string `json:"address"`
			} `json:"vm"`
		}
		r = mvm("info", "--json", "lc1", "-f", file)
		if err := json.Unmarshal([]byte(r.out), &info); err != nil || info.State != "running" || !pidAlive(info.VMMPid) || info.VM.Address != "10.1.0.2" {
			t.Errorf("info --json: %v %+v\n%s", err, info, r.out)
		}
		// exec hands each argument over as one, and exits with the
		// command's status.
		if r := mvm("exec", "lc2", "-f", file, "--", "sh", "-c", `echo "$1|$2"; exit 3`, "sh", "a b", "it's"); r.code != 3 || r.out != "a b|it's\n" {
			t.Errorf("exec: exit %d, %q; want 3 and %q", r.code, r.out, "a b|it's\n")
		}
	})

	t.Run("limits", func(t *testing.T) {
		for _, vm := range in.VMs {
			checkCgroup(t, &vm)
		}
		r := mvm("info", "lc1", "-f", file)
		if want := fmt.Sprintf("/%d MiB, processes ", lc1.Limits.MemoryMiB); !strings.Contains(r.out, want) || !strings.Contains(r.out, "cgroup     ") {
			t.Errorf("info lc1 does not show its memory against its limit (%q) and its cgroup:\n%s", want, r.out)
		}
		r = mvm("status", "--host", "-f", file)
		t.Logf("status --host:\n%s", r.out)
		if !strings.Contains(r.out, "limits (use of running VMs against them):") || !strings.Contains(r.out, fmt.Sprintf("/%d MiB", lc1.Limits.MemoryMiB)) {
			t.Errorf("status --host does not show the VMs' limits")
		}
	})

	t.Run("ssh", func(t *testing.T) {
		if r := mvm("ssh", "-f", file, "lc1", "--", "sh", "-c", "'echo hello from $(hostname); exit 7'"); r.code != 7 || !strings.Contains(r.out, "hello from lc1") {
			t.Errorf("ssh: exit %d, %q; want 7 and the greeting", r.code, r.out)
		}
	})

	t.Run("check", func(t *testing.T) {
		r := mvm("check", "-f", file, "--target", fmt.Sprintf("%s:%d", sandbox.InternetAddr, sandbox.Port), "--seen-as", sandbox.UplinkAddr.Addr().String())
		t.Logf("microvm check:\n%s", r.out)
		if r.code != 0 {
			t.Errorf("check: exit %d", r.code)
		}
	})

	t.Run("the firewall heals", func(t *testing.T) {
		// up started microvm host --detached beside the keepers, as
		// systemd starts microvm-host.service.
		if r := mvm("status", "--host", "-f", file); !strings.Contains(r.out, "firewall: kept by microvm host --detached") {
			t.Fatalf("status --host:\n%s", r.out)
		}
		sandboxtest.FlushHealed(t, sb.Host)
		if r := mvm("check", "-f", file, "--target", fmt.Sprintf("%s:%d", sandbox.InternetAddr, sandbox.Port), "--seen-as", sandbox.UplinkAddr.Addr().String()); r.code != 0 {
			t.Errorf("check after the repair: exit %d\n%s", r.code, r.out)
		}
		log, _ := os.ReadFile(in.Host.HostLog())
		if !strings.Contains(string(log), "firewall: table inet microvm is missing; restored table inet microvm in ") {
			t.Errorf("%s:\n%s", in.Host.HostLog(), log)
		}
	})

	t.Run("killed VMM restarts with /var intact", func(t *testing.T) {
		token := filepath.Base(run) + fmt.Sprint(time.Now().UnixNano())
		if r := mvm("ssh", "-f", file, "lc1", "--", "echo "+token+" > /var/marker && sync"); r.code != 0 {
			t.Fatalf("writing the marker: %s", r.out)
		}
		// The guest plants symlinks to host paths in its /etc and /var;
		// the restart below prepares its files again (attack_test.go).
		checkHost := guestSymlinks(t, func(script string) result { return mvm("ssh", "-f", file, "lc1", "--", script) }, host.StateDir)
		guestDevices(t, func(script string) result { return mvm("ssh", "-f", file, "lc1", "--", script) }, lc1)
		st, ok, err := runner.ReadStarted(lc1)
		if !ok || err != nil {
			t.Fatalf("no started record: %v", err)
		}
		killed := time.Now()
		if err := syscall.Kill(st.VMMPid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var again runner.Started
		for {
			if s, ok, _ := runner.ReadStarted(lc1); ok && s.VMMPid != st.VMMPid && s.VMM().Alive() {
				again = s
				break
			}
			if time.Since(killed) > 10*time.Second {
				t.Fatalf("the VMM was not running again 10 s after it was killed")
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("VMM killed (pid %d); running again after %s (pid %d)", st.VMMPid, again.Time.Sub(killed).Round(10*time.Millisecond), again.VMMPid)
		if r := mvm("ssh", "-f", file, "--wait", "5m", "lc1", "--", "cat /var/marker"); r.code != 0 || strings.TrimSpace(r.out) != token {
			t.Errorf("after the restart /var/marker: exit %d, %q; want %q", r.code, r.out, token)
		}
		checkHost(t)
	})

	ssh := func(vm string) func(string) result {
		return func(script string) result { return mvm("ssh", "-f", file, "--wait", "5m", vm, "--", script) }
	}
	lc2, _ := in.VM("lc2")

	t.Run("a fork past pids.max is refused", func(t *testing.T) { forkPastPids(t, lc1) })

	t.Run("a guest printing without end leaves its console log under the cap", func(t *testing.T) {
		floodConsole(t, lc1, ssh("lc1"))
	})

	t.Run("disk quota", func(t *testing.T) { quotaInGuest(t, lc1, ssh("lc1")) })

	t.Run("a VMM over its memory limit is killed and restarted", func(t *testing.T) {
		overMemory(t, lc2, ssh("lc2"))
	})

	t.Run("a killed supervisor leaves nothing of its VM running", func(t *testing.T) {
		killSupervisor(t, lc2)
	})

	t.Run("console and logs", func(t *testing.T) {
		cmd := sandbox.Command(sb.Host, bin, "console", "-f", file, "lc1")
		pr, pw := io.Pipe()
		cmd.Stdin = pr
		go func() {
			time.Sleep(time.Second)
			pw.Write([]byte("\r"))
			time.Sleep(3 * time.Second)
			pw.Write([]byte{0x1d}) // Ctrl-]
			pw.Close()
		}()
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "lc1 login:") || !strings.Contains(string(out), "detached from lc1's console") {
			t.Errorf("console: %v\n%s", err, out)
		}
		r := mvm("logs", "--file", file, "-n", "3", "lc1")
		if r.code != 0 || strings.Count(r.out, "\n") != 3 {
			t.Errorf("logs -n 3: exit %d, %q", r.code, r.out)
		}
		if r := mvm("logs", "--file", file, "lc1"); !strings.Contains(r.out, "keeper: microvm run lc1 failed") {
			t.Errorf("the supervisor log does not show the restart:\n%s", r.out)
		}
	})

	t.Run("update restarts only what changed", func(t *testing.T) {
		changed := filepath.Join(dir, "changed.toml")
		writeConfig(t, changed, host.StateDir, run, map[string]string{"lc2": "memory = 640"})
		r := mvm("status", "-f", changed)
		if !strings.Contains(r.out, "running*") {
			t.Errorf("status does not mark lc2 as changed:\n%s", r.out)
		}
		r = mvm("-u", "-f", changed, "lc1", "lc2")
		t.Logf("microvm -u lc1 lc2:\n%s", r.out)
		if r.code != 0 || !strings.Contains(r.out, "lc1 is up to date") || !strings.Contains(r.out, "lc2 changed: memory 512 -> 640") {
			t.Errorf("update: exit %d", r.code)
		}
	})

	t.Run("down is a clean shutdown", func(t *testing.T) {
		// lc1's VMM, compromised, reaches for lc2's files and plants
		// pids and a symlink where root reads them (attack_test.go).
		st, ok, err := runner.ReadStarted(lc1)
		if !ok || err != nil {
			t.Fatalf("no started record: %v", err)
		}
		uid, gid := vmmUser(t, st.VMMPid)
		lc2, _ := in.VM("lc2")
		vmmReach(t, uid, gid, lc1, lc2)
		vmmJail(t, in.Host, st.VMMPid, uid, gid, lc1, lc2)
		checkVictim := vmmAttack(t, lc1, uid, gid, dir)
		r := mvm("down", "-f", file, "--timeout", "2m", "lc1")
		t.Logf("microvm down --timeout 2m lc1:\n%s", r.out)
		if r.code != 0 || !strings.Contains(r.out, "lc1 stopped in ") {
			t.Fatalf("down: exit %d", r.code)
		}
		// --force: the plug pulled, at once, and nothing left running.
		// lc2 restarted in the update above; a guest still in its kernel
		// would power off on the stop request before the kill.
		for began := time.Now(); ; time.Sleep(200 * time.Millisecond) {
			if st, ok, _ := runner.ReadStarted(lc2); ok && st.Ready != nil {
				break
			}
			if time.Since(began) > 5*time.Minute {
				t.Fatal("lc2 is not ready 5 minutes after its restart")
			}
		}
		r = mvm("down", "--force", "lc2", "-f", file)
		t.Logf("microvm down --force lc2:\n%s", r.out)
		if r.code != 0 || !strings.Contains(r.out, "lc2 killed (its VMM, pid ") {
			t.Fatalf("down --force: exit %d", r.code)
		}
		console, _ := os.ReadFile(lc1.ConsoleLog())
		if !strings.Contains(string(console), "systemd-shutdown") {
			t.Errorf("no clean guest shutdown in lc1's console:\n%s", supervise.Tail(console, 15))
		}
		for _, vm := range in.VMs {
			if _, ok := supervise.KeeperPid(&vm); ok {
				t.Errorf("%s: keeper still running", vm.Name)
			}
			if out, _ := exec.Command("pgrep", "-f", vm.RunDir+"/").Output(); len(out) > 0 {
				t.Errorf("%s: processes left: %s", vm.Name, out)
			}
		}
		r = mvm("status", "-f", file)
		if strings.Count(r.out, "stopped") != 2 {
			t.Errorf("status after down:\n%s", r.out)
		}
		checkVictim(t)
		// The detached keeper of the firewall goes with the last VM.
		for began := time.Now(); ; time.Sleep(500 * time.Millisecond) {
			if _, ok := supervise.HostKeeper(in.Host); !ok {
				break
			}
			if time.Since(began) > 30*time.Second {
				t.Error("microvm host --detached still runs 30 s after the last VM stopped")
				break
			}
		}
	})

	t.Run("apply brings VMs to the file", func(t *testing.T) {
		if r := mvm("plan", "-f", file); !strings.Contains(r.out, "microvm up lc1\nmicrovm up lc2\n") {
			t.Errorf("plan with both VMs stopped:\n%s", r.out)
		}
		// lc2 does not autostart: apply starts lc1 only.
		noAuto := filepath.Join(dir, "no-autostart.toml")
		writeConfig(t, noAuto, host.StateDir, run, map[string]string{"lc2": "autostart = false"})
		r := mvm("apply", "-f", noAuto)
		t.Logf("microvm apply:\n%s", r.out)
		if r.code != 0 || !strings.Contains(r.out, "microvm up lc1") || strings.Contains(r.out, "lc2") {
			t.Fatalf("apply: exit %d", r.code)
		}
		if r := mvm("apply", "-f", noAuto); r.code != 0 || r.out != "no changes\n" {
			t.Errorf("apply again: exit %d, %q; want no changes", r.code, r.out)
		}
		// A changed setting is a restart, and plan says why.
		mem := filepath.Join(dir, "memory.toml")
		writeConfig(t, mem, host.StateDir, run, map[string]string{"lc1": "memory = 640", "lc2": "autostart = false"})
		if r := mvm("plan", "-f", mem); !strings.Contains(r.out, "microvm restart lc1   # memory 512 -> 640") {
			t.Errorf("plan after a memory change:\n%s", r.out)
		}
		// lc1's keeper and supervisor are killed: its VMM and daemons run
		// on, unsupervised. It is not stopped; destroy refuses it, down
		// (here apply, as lc1 leaves the file) ends what is left.
		g := vmCgroup(t, lc1)
		left := orphan(t, lc1)
		if r := mvm("status", "-f", noAuto, "lc1"); !strings.Contains(r.out, "orphaned") {
			t.Errorf("status of lc1 without supervisor nor keeper:\n%s", r.out)
		}
		if r := mvm("plan", "-f", noAuto); !strings.Contains(r.out, "microvm restart lc1   # left running without its supervisor") {
			t.Errorf("plan with lc1 orphaned:\n%s", r.out)
		}
		// lc1 leaves the file: it is stopped before its network goes, its
		// data stays until destroy --data.
		var b strings.Builder
		fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\n[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n[vm.lc2]\nsubnet = \"10.2.0.0/24\"\nautostart = false\n", host.StateDir, run)
		only2 := filepath.Join(dir, "only-lc2.toml")
		os.WriteFile(only2, []byte(b.String()), 0o644)
		if r := mvm("destroy", "-f", only2, "--data", "--yes", "lc1"); r.code != 1 || !strings.Contains(r.out, "lc1 is still running") {
			t.Errorf("destroy of an orphaned VM: exit %d, %q; want a refusal", r.code, r.out)
		}
		r = mvm("apply", "-f", only2)
		t.Logf("microvm apply without lc1:\n%s", r.out)
		if r.code != 0 || !strings.HasPrefix(r.out, "microvm down lc1   # left") {
			t.Fatalf("apply: exit %d", r.code)
		}
		if _, ok := supervise.KeeperPid(lc1); ok {
			t.Error("lc1 still running after it left the file")
		}
		gone(t, lc1, g, left)
		if _, err := os.Stat(lc1.VarDir); err != nil {
			t.Errorf("lc1's data went with it: %v", err)
		}
		if r := mvm("destroy", "-f", only2, "--data", "lc1"); r.code != 1 || !strings.Contains(r.out, "not confirmed") {
			t.Errorf("destroy without an answer: exit %d, %q", r.code, r.out)
		}
		if r := mvm("destroy", "-f", only2, "--data", "--yes", "lc1"); r.code != 0 {
			t.Errorf("destroy --yes: exit %d, %q", r.code, r.out)
		}
		if _, err := os.Stat(lc1.StateDir); !os.IsNotExist(err) {
			t.Errorf("lc1's data is still there after destroy: %v", err)
		}
	})
}

// pidAlive reports whether a process pid exists, as a test reads a pid
// from JSON (without its start time).
func pidAlive(pid int) bool {
	id, err := proc.Of(pid)
	return err == nil && id.Alive()
}
