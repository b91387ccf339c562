package cli

// Tier 2: plan's checks, its exit codes, the JSON documents that read the
// host, and teardown, all in sandbox namespaces.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// privateExample is the example with its state and run directories moved
// into the test's own, so nothing of the machine's is read or removed.
func privateExample(t *testing.T, state, run string, extra ...string) string {
	t.Helper()
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(src), `state_dir = "/var/lib/microvms"`, "state_dir = \""+state+"\"\nrun_dir = \""+run+"\"", 1)
	for i := 0; i+1 < len(extra); i += 2 {
		s = strings.Replace(s, extra[i], extra[i+1], 1)
	}
	return writeFile(t, s)
}

// TestPlanChecks: plan reports every check apply would make, each once per
// VM it would start, exits 1, and apply refuses the same file without
// changing anything.
func TestPlanChecks(t *testing.T) {
	sb, _ := newSandbox(t, example)
	dir := t.TempDir() // 0700: the VMM's user cannot reach into it
	state, runDir := filepath.Join(dir, "state"), testenv.RunDir(t, "mvp")
	// vm1 and vm2 stay: one bad thing each, and what they share.
	file := privateExample(t, state, runDir,
		`hypervisor = "cloud-hypervisor"`, `hypervisor = "qemu"`,
		"[vm.vm1]", "[vm.vm1]\nhypervisor = \"cloud-hypervisor\"\nimage = \"nosuch\"",
		"[vm.vm3]", "[vm.vm3]\nautostart = false",
		"[vm.vm4]", "[vm.vm4]\nautostart = false")
	// A PATH with nft but neither VMM, and no microvm-init.
	bin := t.TempDir()
	for _, c := range []string{"nft", "ip", "useradd"} {
		if p, err := exec.LookPath(c); err == nil {
			os.Symlink(p, filepath.Join(bin, c))
		}
	}
	t.Setenv("PATH", bin)
	t.Setenv("MICROVM_INIT", "")
	old := runner.KVMDevice
	runner.KVMDevice = filepath.Join(dir, "kvm")
	defer func() { runner.KVMDevice = old }()

	out, code := run(t, sb.Host, "plan", "-f", file)
	want := []string{
		"microvm plan: vm1 uses hypervisor \"cloud-hypervisor\", but cloud-hypervisor is not installed",
		"microvm plan: vm2 uses hypervisor \"qemu\", but qemu-system-x86_64 is not installed",
		"microvm plan: vm1 needs /dev/kvm",
		"microvm plan: vm2 needs /dev/kvm",
		"microvm plan: vm1: image nosuch is not built",
		"microvm plan: vm2: image debian is not built",
		"microvm plan: vm1: microvm-init, the guest's init, is not beside microvm nor on PATH",
		"microvm plan: vm2: the VMM runs as user microvm-vm2, which cannot reach " + filepath.Join(state, "images", "debian", "vmlinux") + ": ",
		"microvm plan: apply refuses until these are fixed; nothing was changed",
	}
	if code != 1 {
		t.Errorf("plan: exit %d, want 1", code)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("plan does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "plan: vm3") {
		t.Errorf("plan checks vm3, which apply would not start:\n%s", out)
	}
	jsonOut, code := run(t, sb.Host, "plan", "--json", "-f", file)
	checkShape(t, jsonOut, planDoc{})
	if code != 1 || strings.Count(jsonOut, "microvm") < len(want)-1 {
		t.Errorf("plan --json: exit %d:\n%s", code, jsonOut)
	}
	out, code = run(t, sb.Host, "apply", "-f", file)
	if code != 1 || !strings.Contains(out, "microvm apply: vm1 needs /dev/kvm") || !strings.Contains(out, "nothing was changed") {
		t.Errorf("apply: exit %d:\n%s", code, out)
	}
	links, _ := sandbox.Command(sb.Host, "ip", "-br", "link").Output()
	if strings.Contains(string(links), "br-vm") {
		t.Errorf("apply changed the host although its checks failed:\n%s", links)
	}
}

// TestDetailedExitcode: plan --detailed-exitcode says 2 while there is
// something to apply and 0 after.
func TestDetailedExitcode(t *testing.T) {
	sb, _ := newSandbox(t, example)
	if _, code := run(t, sb.Host, "plan", "--host-only", "--detailed-exitcode", "-f", example); code != 2 {
		t.Errorf("plan before apply: exit %d, want 2", code)
	}
	if _, code := run(t, sb.Host, "plan", "--host-only", "-f", example); code != 0 {
		t.Errorf("plan without --detailed-exitcode: exit %d, want 0", code)
	}
	out, _ := run(t, sb.Host, "plan", "--host-only", "--json", "-f", example)
	checkShape(t, out, planDoc{})
	mustRun(t, sb.Host, "apply", "--host-only", "-f", example)
	if out, code := run(t, sb.Host, "plan", "--host-only", "--detailed-exitcode", "-f", example); code != 0 {
		t.Errorf("plan after apply: exit %d, want 0:\n%s", code, out)
	}
}

// TestJSONHost checks the documents of commands that read the host.
func TestJSONHost(t *testing.T) {
	sb, _ := newSandbox(t, example)
	state, runDir := t.TempDir(), testenv.RunDir(t, "mvj")
	file := privateExample(t, state, runDir)
	for _, c := range []struct {
		args []string
		doc  any
	}{
		{[]string{"status", "--json"}, statusDoc{}},
		{[]string{"status", "--json", "--host", "vm1"}, statusDoc{}},
		{[]string{"info", "vm2", "--json"}, infoDoc{}},
		{[]string{"image", "list", "--json"}, imagesDoc{}},
		{[]string{"top", "--json"}, topDoc{}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			checkShape(t, mustRun(t, sb.Host, append(c.args, "-f", file)...), c.doc)
		})
	}
	out := mustRun(t, sb.Host, "status", "--json", "--host", "-f", file)
	for _, want := range []string{`"disk": {`, `"total_bytes"`, `"tailscale": {`, `"down": "tailscaled is not running`} {
		if !strings.Contains(out, want) {
			t.Errorf("status --host --json lacks %s:\n%s", want, out)
		}
	}
}

// TestCheckStopped: check says at once which VMs are stopped.
func TestCheckStopped(t *testing.T) {
	sb, _ := newSandbox(t, example)
	file := privateExample(t, t.TempDir(), testenv.RunDir(t, "mvc"))
	out, code := run(t, sb.Host, "check", "--target", "203.0.113.10:8000", "--wait", "5m", "-f", file)
	if code != 1 || !strings.Contains(out, "vm1, vm2, vm3, vm4 are stopped; check needs every VM running") {
		t.Errorf("check: exit %d:\n%s", code, out)
	}
}

// TestTeardown: after apply, teardown leaves nothing of the program's on
// the host (links, the nftables table, units, run_dir with its mounts) and
// keeps the data until --data.
func TestTeardown(t *testing.T) {
	sb, _ := newSandbox(t, example)
	state, runDir := t.TempDir(), testenv.RunDir(t, "mvt")
	file := privateExample(t, state, runDir)
	mustRun(t, sb.Host, "apply", "--host-only", "-f", file)

	// Units as apply installs them under systemd, their links, and
	// someone else's unit, which must stay.
	units := t.TempDir()
	old := supervise.UnitDir
	supervise.UnitDir = units
	defer func() { supervise.UnitDir = old }()
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	u, err := supervise.Render("/usr/local/bin/microvm", file, in.VMs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Install(units); err != nil {
		t.Fatal(err)
	}
	for link, to := range map[string]string{
		"microvms.target.wants/microvm@vm1.service": "../" + supervise.Template,
		"multi-user.target.wants/microvms.target":   "../" + supervise.Target,
		"multi-user.target.wants/ssh.service":       "/lib/systemd/system/ssh.service",
	} {
		os.MkdirAll(filepath.Join(units, filepath.Dir(link)), 0o755)
		if err := os.Symlink(to, filepath.Join(units, link)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(units, "other.service"), []byte("[Unit]\n"), 0o644)
	// A person's own drop-in beside the program's limits.
	os.WriteFile(filepath.Join(units, "microvm@vm1.service.d", "local.conf"), []byte("[Service]\nNice=5\n"), 0o644)

	// A VM's run directory and an image view mounted in run_dir, as a
	// supervisor leaves them; and data in state_dir.
	os.MkdirAll(filepath.Join(runDir, "vm1"), 0o750)
	os.WriteFile(filepath.Join(runDir, "vm1", "console.log"), []byte("boot\n"), 0o644)
	view := filepath.Join(runDir, "images", "debian")
	os.MkdirAll(view, 0o755)
	if err := unix.Mount(t.TempDir(), view, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(view, unix.MNT_DETACH) })
	os.MkdirAll(filepath.Join(state, "vm1", "var"), 0o755)

	dry := mustRun(t, sb.Host, "teardown", "--dry-run", "-f", file)
	for _, want := range []string{"rm microvm-host.service microvm@.service microvm@vm1.service.d/limits.conf microvm@vm2.service.d/limits.conf microvm@vm3.service.d/limits.conf microvm@vm4.service.d/limits.conf microvms.target", "ip link del vm-vm1", "ip link del br-vm4", "nft delete table inet microvm", "umount -R " + runDir,
		"ip rule del priority 5101 iif br-vm1 lookup 7173741 protocol 109", "ip route del blackhole 10.4.0.0/24 table 7173741 proto 109",
		"ip -6 rule del priority 5101 iif br-vm1 lookup 7173741 protocol 109", "::/64 table 7173741 proto 109"} {
		if !strings.Contains(dry, want) {
			t.Errorf("teardown --dry-run lacks %q:\n%s", want, dry)
		}
	}
	if out := testenv.WithoutDiskWarning(mustRun(t, sb.Host, "plan", "--host-only", "-f", file)); out != "no changes\n" {
		t.Errorf("teardown --dry-run changed something:\n%s", out)
	}

	out := mustRun(t, sb.Host, "teardown", "-f", file)
	t.Logf("microvm teardown:\n%s", out)
	links, _ := sandbox.Command(sb.Host, "ip", "-o", "link").Output()
	if strings.Contains(string(links), "microvm:") || strings.Contains(string(links), "br-vm") || strings.Contains(string(links), "vm-vm") {
		t.Errorf("links left:\n%s", links)
	}
	if rules, _ := sandbox.Command(sb.Host, "nft", "list", "ruleset").Output(); len(strings.TrimSpace(string(rules))) > 0 {
		t.Errorf("nft list ruleset after teardown:\n%s", rules)
	}
	for _, family := range []string{"-4", "-6"} {
		if rules, _ := sandbox.Command(sb.Host, "ip", family, "rule").Output(); strings.Contains(string(rules), "proto 109") || strings.Contains(string(rules), "7173741") {
			t.Errorf("ip %s rule after teardown:\n%s", family, rules)
		}
		if routes, _ := sandbox.Command(sb.Host, "ip", family, "route", "show", "table", "7173741").Output(); len(strings.TrimSpace(string(routes))) > 0 {
			t.Errorf("ip %s route show table 7173741 after teardown:\n%s", family, routes)
		}
	}
	var left []string
	filepath.Walk(units, func(p string, fi os.FileInfo, err error) error {
		if rel, _ := filepath.Rel(units, p); rel != "." {
			left = append(left, rel)
		}
		return nil
	})
	if got, want := strings.Join(left, " "), "microvm@vm1.service.d microvm@vm1.service.d/local.conf multi-user.target.wants multi-user.target.wants/ssh.service other.service"; got != want {
		t.Errorf("unit directory after teardown: %s, want %s", got, want)
	}
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Errorf("run_dir is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "vm1", "var")); err != nil {
		t.Errorf("teardown without --data deleted data: %v", err)
	}
	if out := mustRun(t, sb.Host, "teardown", "-f", file); out != "nothing to remove\n" {
		t.Errorf("second teardown: %q", out)
	}

	if out, code := runWith(t, sb.Host, "no\n", "teardown", "--data", "-f", file); code != 1 || !strings.Contains(out, "not confirmed") {
		t.Errorf("teardown --data answered no: exit %d\n%s", code, out)
	}
	mustRun(t, sb.Host, "teardown", "--data", "--yes", "-f", file)
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state_dir is still there after --data: %v", err)
	}
}
