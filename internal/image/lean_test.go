package image

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLean applies the lean recipe's changes to a tree laid out as Debian's
// packages leave it, twice (the second time changes nothing), and checks
// each kind of change.
func TestLean(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, []string{
		"etc/systemd/system/timers.target.wants/apt-daily.timer -> /lib/systemd/system/apt-daily.timer",
		"etc/systemd/system/timers.target.wants/fstrim.timer -> /lib/systemd/system/fstrim.timer",
		"etc/systemd/system/multi-user.target.wants/ssh.service -> /lib/systemd/system/ssh.service",
		"etc/systemd/system/multi-user.target.wants/e2scrub_reap.service -> /lib/systemd/system/e2scrub_reap.service",
		"etc/systemd/system/getty.target.wants/getty@tty1.service -> /lib/systemd/system/getty@.service",
		"etc/systemd/system/sysinit.target.wants/systemd-pstore.service -> /lib/systemd/system/systemd-pstore.service",
		// A file where a mask goes is replaced, not written through.
		"etc/systemd/system/systemd-logind.service -> /usr/lib/systemd/system/systemd-logind.service",
		"usr/lib/systemd/system/systemd-logind.service: [Unit]",
		"etc/acpi/events/",
		"etc/modules: # /etc/modules: kernel modules to load at boot time.",
		"etc/modules-load.d/modules.conf -> ../modules",
	})
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := lean(root); err != nil {
		t.Fatal(err)
	}
	first := readTree(t, dir)
	if err := lean(root); err != nil {
		t.Fatal(err)
	}
	if got := readTree(t, dir); !slices.Equal(got, first) {
		t.Errorf("the second run changed the tree:\n%s\nthen\n%s", quoteLines(first), quoteLines(got))
	}

	link := func(name string) string {
		target, _ := os.Readlink(filepath.Join(dir, name))
		return target
	}
	for _, g := range leanGenerators {
		if got := link("etc/systemd/system-generators/" + g); got != "/dev/null" {
			t.Errorf("generator %s links to %q, want /dev/null", g, got)
		}
	}
	for _, u := range leanMasked {
		if got := link("etc/systemd/system/" + u); got != "/dev/null" {
			t.Errorf("%s links to %q, want /dev/null (masked)", u, got)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/lib/systemd/system/systemd-logind.service")); string(b) != "[Unit]" {
		t.Errorf("masking logind changed the unit it pointed to: %q", b)
	}
	for _, e := range first {
		for _, u := range leanDisabled {
			if strings.Contains(e, ".wants/"+u+" ") {
				t.Errorf("still enabled: %s", e)
			}
		}
	}
	for _, want := range []string{
		"etc/systemd/system/multi-user.target.wants/ssh.service -> /lib/systemd/system/ssh.service",
		"etc/systemd/system/multi-user.target.wants/microvm-shutdown-log.service -> /usr/lib/systemd/system/microvm-shutdown-log.service",
		"usr/lib/systemd/system/serial-getty@ttyS0.service: " + serialGetty,
		"usr/lib/systemd/system/ssh.service.d/microvm.conf: " + sshEarly,
		"etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service -> /usr/lib/systemd/system/serial-getty@ttyS0.service",
		"etc/modules: # /etc/modules: kernel modules to load at boot time.",
		"etc/modules-load.d/",
	} {
		if !slices.Contains(first, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, f := range leanFiles {
		if fi, err := os.Lstat(filepath.Join(dir, f.name)); err != nil || fi.Mode().Perm() != 0o644 && fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s: %v", f.name, err)
		}
	}
	for _, l := range strings.Split(serialGetty, "\n") {
		if strings.HasPrefix(l, "BindsTo=") || strings.HasPrefix(l, "After=") && strings.Contains(l, ".device") {
			t.Errorf("the serial getty still waits for a device unit, which only udev makes: %s", l)
		}
	}
}
