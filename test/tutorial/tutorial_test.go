// Package tutorial runs the README's tutorial as a reader would: every
// command of its sh blocks, exactly as printed, in order, as root, from a
// directory that is not the repository (or from the repository for the
// commands that name its files). It runs inside a sandbox: the network
// namespaces of package sandbox, and a private mount namespace in which
// /etc, /var/lib and /run are overlays and /usr/local/bin is empty, so
// that /etc/microvm, /var/lib/microvms, /run/microvm and the installed
// binaries are the test's own. The few commands that cannot run here are
// listed below with the reason; the test fails if one of them is no longer
// in the README, so the list stays true.
package tutorial

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// notHere are the tutorial's commands that do not run in the test, and why.
var notHere = map[string]string{
	"make deps":                      "installs packages with apt-get; CI runs it (.ci/deps) before the tests",
	"apt install zfsutils-linux":     "installs a package; the tests use zfs-fuse, whose zfs and zpool clash with it",
	"zpool create -f rpool /dev/sdb": "erases a disk; the ZFS tests make their pools in files",
	"microvm snapshot vm1 before-upgrade": "step 2 shows what ZFS brings once step 6 has run: it needs a pool called rpool; " +
		"internal/cli's TestSnapshotCommandsZFS and test/lifecycle's TestRollbackZFS run the snapshot commands on zfs-fuse",
	"microvm snapshots vm1":                  "as microvm snapshot, above",
	"microvm rollback vm1 before-upgrade":    "as microvm snapshot, above",
	"microvm snapshot rm vm1 before-upgrade": "as microvm snapshot, above",
	"microvm status --host":                  "in step 2, before the file exists (step 3); internal/cli's TestJSONHost runs it",
	"microvm image build debian": "takes minutes and downloads about 100 MB: the test uses the image the image tests " +
		"built (internal/image/imagetest), which this command would refuse to replace",
	"systemctl status microvm@vm1":                     "systemd is not PID 1 here; the units are verified with systemd-analyze (internal/supervise)",
	"journalctl -u microvm@vm1 -f":                     "as systemctl, above (and -f never ends)",
	"curl -fsSL https://tailscale.com/install.sh | sh": "downloads from the internet, which tests never reach",
	"tailscale up --advertise-routes=10.1.0.0/24,10.2.0.0/24,10.3.0.0/24,10.4.0.0/24": "needs a tailnet; test/tailscale " +
		"runs tailscaled against a test control server",
}

// readersEdit is what the reader writes into /etc/microvm/infra.toml in
// step 3 here, beside the uplink: this machine has no KVM and no Cloud
// Hypervisor, so QEMU emulates; one VM boots (CI time), and the reader's
// key is vm1's.
func readersEdit(src, pubKey string) string {
	s := strings.Replace(src, "[host]\n", "[host]\naccel = \"tcg\"\n", 1)
	s = strings.Replace(s, `hypervisor = "cloud-hypervisor"`, `hypervisor = "qemu"`, 1)
	s = strings.Replace(s, "[vm.vm1]", "[vm.vm1]\nssh_keys = [\""+strings.TrimSpace(pubKey)+"\"]", 1)
	for _, vm := range []string{"vm2", "vm3", "vm4"} {
		s = strings.Replace(s, "[vm."+vm+"]", "[vm."+vm+"]\nautostart = false", 1)
	}
	return s
}

// commands returns the commands of the tutorial's sh blocks.
func commands(readme string) []string { return testenv.ReadmeCommands(readme, "## Tutorial") }

func TestCommandsFound(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmds := commands(string(b))
	if len(cmds) < 25 {
		t.Fatalf("found %d commands in the tutorial, want at least 25: %q", len(cmds), cmds)
	}
	have := map[string]bool{}
	for _, c := range cmds {
		have[c] = true
	}
	for c := range notHere {
		if !have[c] {
			t.Errorf("%q is listed as not run, but the tutorial no longer has it", c)
		}
	}
}

// ns is the tutorial's sandbox: a process holding a private mount
// namespace inside the sandbox's host network namespace.
type ns struct {
	t      *testing.T
	holder *exec.Cmd
	env    []string
}

// run runs line with sh in the namespace, in dir, and returns its output.
func (n *ns) run(dir, line string, stdin string) (string, error) {
	args := []string{"-t", strconv.Itoa(n.holder.Process.Pid), "-m", "-n", "--", "env", "-i"}
	args = append(append(args, n.env...), "sh", "-c", "cd "+dir+" && "+line)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *ns) must(dir, line, stdin string) string {
	n.t.Helper()
	out, err := n.run(dir, line, stdin)
	if err != nil {
		n.t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return out
}

func TestTutorial(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "unshare", "nsenter", "mount", "qemu-system-x86_64", "ssh", "ssh-keygen", "make", "go", "cp")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs("../..")
	cmds := commands(string(readme))

	// The state_dir of the tutorial: a copy of the test image, made of
	// hard links (on the image cache's filesystem), so that teardown
	// --data deletes the copy and not the cache.
	cache := imagetest.Debian(t).StateDir
	state, err := os.MkdirTemp(filepath.Dir(cache), "tutorial-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	if out, err := exec.Command("cp", "-al", filepath.Join(cache, "images"), state+"/").CombinedOutput(); err != nil {
		t.Fatalf("cp -al: %s %v", out, err)
	}
	os.Chmod(state, 0o755)

	in, err := config.Load(filepath.Join(repo, "examples", "infra.toml"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()

	// The reader's SSH key, and the ssh client set up to use it.
	home := t.TempDir()
	key := filepath.Join(home, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %s %v", out, err)
	}
	pub, _ := os.ReadFile(key + ".pub")

	scratch := t.TempDir()
	// nsenter rather than ip netns exec, which mounts a /sys of the
	// namespace's own without the cgroup hierarchies the VMs' keepers
	// make their cgroups in (as sandbox.Command does).
	holder := exec.Command("nsenter", "--net="+filepath.Join("/run/netns", sb.Host), "--", "unshare", "--mount", "--propagation", "private", "sleep", "infinity")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	goPath, _ := exec.LookPath("go")
	goEnv := func(k string) string {
		b, _ := exec.Command("go", "env", k).Output()
		return strings.TrimSpace(string(b))
	}
	n := &ns{t: t, holder: holder, env: []string{
		"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + filepath.Dir(goPath),
		"HOME=" + home, "GOCACHE=" + goEnv("GOCACHE"), "GOMODCACHE=" + goEnv("GOMODCACHE"), "GOFLAGS=" + goEnv("GOFLAGS"),
	}}
	bin := testenv.Binaries(t) // for the cleanup, whatever the tutorial did
	defer func() {
		out, _ := n.run("/", bin+" teardown -f /etc/microvm/infra.toml 2>&1 || true", "")
		if t.Failed() {
			t.Logf("cleanup teardown:\n%s", out)
			con, _ := n.run("/", "tail -n 30 /run/microvm/vm1/console.log /run/microvm/vm1/supervisor.log", "")
			t.Logf("vm1's logs:\n%s", con)
		}
		killNamespace(holder.Process.Pid)
		holder.Wait()
	}()
	time.Sleep(200 * time.Millisecond) // for unshare to exec sleep
	n.must("/", strings.Join([]string{
		"mount -t tmpfs tmpfs " + scratch,
		"mkdir " + scratch + "/etc " + scratch + "/etc.w " + scratch + "/var " + scratch + "/var.w " + scratch + "/run " + scratch + "/run.w",
		"mount -t overlay overlay -o lowerdir=/etc,upperdir=" + scratch + "/etc,workdir=" + scratch + "/etc.w /etc",
		"mount -t overlay overlay -o lowerdir=/var/lib,upperdir=" + scratch + "/var,workdir=" + scratch + "/var.w /var/lib",
		"mount -t overlay overlay -o lowerdir=/run,upperdir=" + scratch + "/run,workdir=" + scratch + "/run.w /run",
		"mkdir -p /var/lib/microvms /run/microvm",
		"mount --bind " + state + " /var/lib/microvms",
		"mount -t tmpfs -o mode=0755 tmpfs /run/microvm", // as /run is: only root writes there
		"mount -t tmpfs tmpfs /usr/local/bin",
		"mkdir -p /etc/ssh/ssh_config.d",
		"printf 'Host 10.*\\n  IdentityFile " + key + "\\n  UserKnownHostsFile " + home + "/known_hosts\\n  StrictHostKeyChecking accept-new\\n  BatchMode yes\\n' > /etc/ssh/ssh_config.d/tutorial.conf",
	}, " && "), "")

	elsewhere := t.TempDir()
	booted := false
	for _, c := range cmds {
		if why, ok := notHere[c]; ok {
			t.Logf("not run: %s  (%s)", c, why)
			continue
		}
		dir := elsewhere
		if strings.HasPrefix(c, "make ") || strings.Contains(c, "examples/") {
			dir = repo
		}
		if !booted && (strings.HasPrefix(c, "ssh ") || strings.HasPrefix(c, "microvm ssh") || strings.HasPrefix(c, "microvm exec")) {
			// The reader waits for the guest to boot (minutes under TCG).
			began := time.Now()
			if out, err := n.run(elsewhere, "microvm ssh --wait 8m vm1 -- true", ""); err != nil {
				t.Fatalf("vm1 did not answer SSH: %v\n%s", err, out)
			}
			t.Logf("vm1 answers SSH after %s", time.Since(began).Round(time.Second))
			booted = true
		}
		began := time.Now()
		out, err := n.run(dir, c, "")
		t.Logf("$ %s  (%s)\n%s", c, time.Since(began).Round(100*time.Millisecond), tail(out, 15))
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if c == "mkdir -p /etc/microvm && cp examples/infra.toml /etc/microvm/infra.toml" {
			src := n.must("/", "cat /etc/microvm/infra.toml", "")
			n.must("/", "cat > /etc/microvm/infra.toml", readersEdit(src, string(pub)))
		}
		if c == "microvm teardown" {
			nothingLeft(t, sb, n)
		}
	}
	if !booted {
		t.Error("no command of the tutorial logged in to a VM")
	}
}

// nothingLeft checks that teardown left nothing of the program's: no link
// it made, no nftables table, no VM process.
func nothingLeft(t *testing.T, sb *sandbox.Sandbox, n *ns) {
	t.Helper()
	links, _ := sandbox.Command(sb.Host, "ip", "-o", "link").Output()
	if bytes.Contains(links, []byte("microvm:")) || bytes.Contains(links, []byte("br-vm")) || bytes.Contains(links, []byte("vm-vm")) {
		t.Errorf("links left after teardown:\n%s", links)
	}
	if rules, _ := sandbox.Command(sb.Host, "nft", "list", "ruleset").Output(); len(bytes.TrimSpace(rules)) > 0 {
		t.Errorf("nft list ruleset after teardown:\n%s", rules)
	}
	if pids := inNamespace(n.holder.Process.Pid); len(pids) > 0 {
		t.Errorf("processes left after teardown: %v", pids)
	}
	if out, _ := n.run("/", "test ! -e /run/microvm || ls -A /run/microvm", ""); strings.TrimSpace(out) != "" {
		t.Errorf("run_dir left after teardown: %s", out)
	}
}

// inNamespace lists the processes in holder's mount namespace, but holder.
func inNamespace(holder int) []int {
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder))
	if err != nil {
		return nil
	}
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == holder {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == want {
			out = append(out, pid)
		}
	}
	return out
}

// killNamespace ends what the tutorial left in holder's namespace (after a
// failure: the keepers and VMMs it started), then the holder.
func killNamespace(holder int) {
	for _, pid := range inNamespace(holder) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	syscall.Kill(holder, syscall.SIGKILL)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines)", len(lines))}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
