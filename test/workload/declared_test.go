package workload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// declaredFile is an infra.toml of one VM on the plain debian image (or
// img) that declares what runs in it: a timer the image has but does not
// enable, an instance of a template, a unit the image enables disabled,
// files in /etc and /srv with their modes and owners, and run_once.
func declaredFile(t *testing.T, path string, host config.Host, run, img string) {
	t.Helper()
	s := fmt.Sprintf(`[host]
uplink = "eth0"
state_dir = %q
run_dir = %q
accel = "tcg"

[defaults]
hypervisor = "qemu"
vcpu = 1
memory = 512

[vm.gcfg]
subnet = "10.7.0.0/24"
image = %q
services = ["dpkg-db-backup.timer", "getty@tty1"]
disable_services = ["microvm-shutdown-log"]
run_once = ["echo ran >> /var/lib/gcfg-runs", "systemctl is-enabled dpkg-db-backup.timer"]

[vm.gcfg.files]
"/etc/gcfg/app.conf" = { content = "greeting = hello\n", mode = "0640", owner = "root:www-data" }
"/srv/www/index.html" = { content = "<h1>gcfg</h1>\n", owner = "www-data" }
`, host.StateDir, run, img)
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDeclared boots a VM that declares services, disable_services, files
// and run_once, and looks at them from inside the guest: the units are
// enabled (or disabled) as systemctl would have it, the files have their
// content, mode and owner, run_once ran once and not again after a
// restart, and a file the guest changed is the host's again. Then the VM
// moves to another image, whose /etc and /var differ from the one it was
// seeded from: the three-way merge brings what the image added, changed
// and removed, and keeps the guest's own change, saying so.
//
// The other image is the test image again, as hard links (cp -al: a
// second), with a few of its /etc and /var files replaced, added or
// removed as unlinks and new files, so the shared test image is not
// changed: a plain image as `microvm image import` would leave it.
// test/workload's TestTwoTier moves VMs to new versions of declared
// images, which are made by apt.
func TestDeclared(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go", "cp")
	host := imagetest.Debian(t)
	run := testenv.RunDir(t, "mvg")
	dir := t.TempDir()
	file := filepath.Join(dir, "infra.toml")
	declaredFile(t, file, host, run, imagetest.Name)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("gcfg")
	os.RemoveAll(vm.StateDir)
	const other = "gcfg-img"
	otherDir := host.ImageDir(other)
	os.RemoveAll(otherDir)
	bin := testenv.Binaries(t)
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	mvm := func(args ...string) (string, error) {
		t.Helper()
		out, err := sandbox.Command(sb.Host, bin, args...).CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("microvm %s: %v", strings.Join(args, " "), err)
		}
		return string(out), err
	}
	defer func() {
		supervise.StopDetached(vm, 90*time.Second)
		if t.Failed() {
			sup, _ := os.ReadFile(vm.SupervisorLog())
			t.Logf("supervisor log:\n%s\nconsole (end):\n%s", supervise.Tail(sup, 30), sandbox.Console(vm, 30))
		}
		os.RemoveAll(otherDir) // its links; the test image keeps its files
	}()

	// plan checks that the units are in the image.
	bad := filepath.Join(dir, "bad.toml")
	src, _ := os.ReadFile(file)
	os.WriteFile(bad, []byte(strings.Replace(string(src), `"getty@tty1"]`, `"getty@tty1", "nosuch"]`, 1)), 0o644)
	if out, err := mvm("plan", "-f", bad); err == nil || !strings.Contains(out, "unit nosuch.service is not in the VM's image") {
		t.Errorf("plan with a unit the image lacks: %v\n%s", err, out)
	}

	if out, err := mvm("apply", "--host-only", "-f", file); err != nil {
		t.Fatalf("apply --host-only: %v\n%s", err, out)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if out, err := mvm("up", "--wait", "-f", file, "gcfg"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	t.Logf("gcfg is ready %s after up", time.Since(began).Round(time.Second))
	ssh := func(cmd string) string {
		t.Helper()
		out, _ := sandbox.Command(sb.Host, bin, "ssh", "-f", file, "gcfg", "--", cmd).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	// booted waits until the guest's boot has finished (sshd answers
	// before), so that run_once has had its turn.
	booted := func() {
		t.Helper()
		sandboxtest.Login(t, sb, vm).Close()
		if out := ssh("timeout 300 systemctl is-system-running --wait"); out != "running" && out != "degraded" {
			t.Fatalf("the guest's boot: %q", out)
		}
	}
	booted()

	t.Run("services", func(t *testing.T) {
		if out := ssh("systemctl is-enabled dpkg-db-backup.timer getty@tty1.service microvm-shutdown-log.service; true"); out != "enabled\nenabled\ndisabled" {
			t.Errorf("systemctl is-enabled dpkg-db-backup.timer getty@tty1.service microvm-shutdown-log.service:\n%s\nwant enabled, enabled, disabled", out)
		}
		if out := ssh("systemctl is-active dpkg-db-backup.timer"); out != "active" {
			t.Errorf("dpkg-db-backup.timer is %q, want active", out)
		}
	})
	t.Run("files", func(t *testing.T) {
		for path, want := range map[string]string{
			"/etc/gcfg/app.conf":  "640 root www-data greeting = hello",
			"/srv/www/index.html": "644 www-data www-data <h1>gcfg</h1>",
			"/srv/www":            "755 root root",
		} {
			got := ssh("stat -c '%a %U %G' " + path + " && test -d " + path + " || cat " + path)
			if got = strings.Join(strings.Fields(got), " "); got != want {
				t.Errorf("%s: %q, want %q", path, got, want)
			}
		}
	})
	t.Run("run_once", func(t *testing.T) {
		if out := ssh("cat /var/lib/gcfg-runs"); out != "ran" {
			t.Errorf("/var/lib/gcfg-runs = %q, want one line: ran", out)
		}
		if out := ssh("journalctl --no-pager -o cat -u microvm-run-once.service"); !strings.Contains(out, "enabled") {
			t.Errorf("run_once's output is not in the journal:\n%s", out)
		}
	})

	// The guest changes the host's file and /etc/motd; it restarts.
	ssh("echo tampered > /etc/gcfg/app.conf; echo mine > /etc/motd")
	if out, err := mvm("restart", "-f", file, "gcfg"); err != nil {
		t.Fatalf("restart: %v\n%s", err, out)
	}
	booted()
	t.Run("after a restart", func(t *testing.T) {
		if out := ssh("cat /var/lib/gcfg-runs"); out != "ran" {
			t.Errorf("/var/lib/gcfg-runs = %q: run_once ran again", out)
		}
		if out := ssh("systemctl show -p ConditionResult --value microvm-run-once.service"); out != "no" {
			t.Errorf("microvm-run-once.service's condition: %q, want no (its stamp is there)", out)
		}
		if out := ssh("cat /etc/gcfg/app.conf"); out != "greeting = hello" {
			t.Errorf("/etc/gcfg/app.conf = %q after a restart; want the host's again", out)
		}
	})

	// The other image: its /etc and /var differ from the seed's.
	if out, err := exec.Command("cp", "-al", host.ImageDir(imagetest.Name), otherDir).CombinedOutput(); err != nil {
		t.Fatalf("cp -al: %v %s", err, out)
	}
	root := host.ImageRootfs(other)
	for name, content := range map[string]string{
		"etc/gcfg-added.conf": "added by the image\n",
		"etc/issue.net":       "the image's new issue.net\n",
		"etc/motd":            "the image's new motd\n",
		"var/lib/gcfg/state":  "the image's state\n",
		"etc/issue":           "", // removed
		"etc/systemd/system/timers.target.wants/fstrim.timer": "-> /lib/systemd/system/fstrim.timer",
	} {
		p := filepath.Join(root, name)
		os.Remove(p) // a link to the test image's file: unlinked, never written
		os.MkdirAll(filepath.Dir(p), 0o755)
		switch {
		case content == "":
		case strings.HasPrefix(content, "-> "):
			err = os.Symlink(strings.TrimPrefix(content, "-> "), p)
		default:
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	declaredFile(t, file, host, run, other)
	out, err := mvm("-u", "-f", file, "gcfg")
	if err != nil || !strings.Contains(out, "gcfg changed: image "+imagetest.Name+" -> "+other) {
		t.Fatalf("microvm -u gcfg: %v\n%s", err, out)
	}
	booted()
	t.Run("the merge", func(t *testing.T) {
		for cmd, want := range map[string]string{
			"cat /etc/gcfg-added.conf":                        "added by the image",
			"cat /etc/issue.net":                              "the image's new issue.net",
			"cat /etc/motd":                                   "mine",
			"test -e /etc/issue || echo gone":                 "gone",
			"cat /var/lib/gcfg/state":                         "the image's state",
			"systemctl is-enabled fstrim.timer":               "enabled",
			"systemctl is-enabled microvm-shutdown-log; true": "disabled",
			"cat /etc/gcfg/app.conf":                          "greeting = hello",
			"stat -c '%U %G' /etc/gcfg/app.conf":              "root www-data",
		} {
			if got := ssh(cmd); got != want {
				t.Errorf("%s: %q, want %q", cmd, got, want)
			}
		}
		sup, _ := os.ReadFile(vm.SupervisorLog())
		if !strings.Contains(string(sup), "merged; kept the VM's own version of /etc/motd") {
			t.Errorf("the supervisor's log does not say /etc/motd was kept:\n%s", supervise.Tail(sup, 20))
		}
		info, _ := mvm("info", "-f", file, "gcfg")
		if !strings.Contains(info, "changed /etc/motd") || !strings.Contains(info, "differ from its image's") {
			t.Errorf("info does not say /etc/motd differs from the image's:\n%s", info)
		}
		t.Logf("microvm info gcfg:\n%s", info)
	})
}
