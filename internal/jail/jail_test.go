package jail

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

func TestWrap(t *testing.T) {
	j := Jail{Root: "/run/microvm/vm1/jail", UID: 990, GID: 990, Groups: []uint32{990, 104},
		ReadOnly: []string{"/usr", "/var/lib/microvms/images/debian/vmlinux"},
		Writable: []string{"/run/microvm/vm1/vmm"},
		Devices:  []string{"/dev/null", "/dev/kvm"}}
	cmd := exec.Command("/usr/bin/qemu-system-x86_64", "-name", "vm1")
	cmd.ExtraFiles = []*os.File{os.Stdin}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := j.Wrap(cmd); err != nil {
		t.Fatal(err)
	}
	want := "microvm-jail --root /run/microvm/vm1/jail --uid 990 --gid 990 --groups 990,104" +
		" --ro /usr --ro /var/lib/microvms/images/debian/vmlinux --rw /run/microvm/vm1/vmm" +
		" --dev /dev/null --dev /dev/kvm -- /usr/bin/qemu-system-x86_64 -name vm1"
	if got := strings.Join(cmd.Args, " "); got != want {
		t.Errorf("args:\ngot  %s\nwant %s", got, want)
	}
	if cmd.Path != "/proc/self/exe" {
		t.Errorf("path %s, want /proc/self/exe", cmd.Path)
	}
	if got := cmd.SysProcAttr.Cloneflags; got != Namespaces {
		t.Errorf("clone flags %#x, want %#x", got, Namespaces)
	}
	if !cmd.SysProcAttr.Setpgid || len(cmd.ExtraFiles) != 1 {
		t.Errorf("Wrap lost the command's process group or descriptors")
	}
	// The helper reads back what Wrap wrote.
	back, argv, err := parse(cmd.Args[1:])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(back.Args(), " "), strings.Join(j.Args(), " "); got != want {
		t.Errorf("parsed jail:\ngot  %s\nwant %s", got, want)
	}
	if got := strings.Join(argv, " "); got != "/usr/bin/qemu-system-x86_64 -name vm1" {
		t.Errorf("parsed program %q", got)
	}
}

func TestWrapRefuses(t *testing.T) {
	good := Jail{Root: "/run/j", UID: 990, GID: 990, ReadOnly: []string{"/usr"}}
	tests := []struct {
		name string
		j    Jail
		cmd  func() *exec.Cmd
		want string
	}{
		{"root user", Jail{Root: "/run/j", UID: 0, GID: 990}, nil, "as root only with the capabilities"},
		{"root group", Jail{Root: "/run/j", UID: 990, GID: 990, Groups: []uint32{0}}, nil, "group root"},
		{"capabilities for a user", Jail{Root: "/run/j", UID: 990, GID: 990, Caps: []string{"chown"}}, nil, "only to a program run as root"},
		{"unknown capability", Jail{Root: "/run/j", Caps: []string{"sys_admin"}}, nil, `"sys_admin": unknown`},
		{"relative path", Jail{Root: "/run/j", UID: 990, GID: 990, ReadOnly: []string{"usr"}}, nil, "not a clean absolute path"},
		{"unclean path", Jail{Root: "/run/j", UID: 990, GID: 990, Writable: []string{"/run/../etc"}}, nil, "not a clean absolute path"},
		{"root as root", Jail{Root: "/", UID: 990, GID: 990}, nil, "not a clean absolute path"},
		{"bind the host's root", Jail{Root: "/run/j", UID: 990, GID: 990, ReadOnly: []string{"/"}}, nil, "not a clean absolute path"},
		{"a user of its own", good, func() *exec.Cmd {
			c := exec.Command("/bin/true")
			c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 5}}
			return c
		}, "has a user of its own"},
		{"a chroot of its own", good, func() *exec.Cmd {
			c := exec.Command("/bin/true")
			c.SysProcAttr = &syscall.SysProcAttr{Chroot: "/tmp"}
			return c
		}, "root or user namespace"},
		{"missing program", good, func() *exec.Cmd { return exec.Command("no-such-program-here") }, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/true")
			if tt.cmd != nil {
				cmd = tt.cmd()
			}
			err := tt.j.Wrap(cmd)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Wrap: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestProgram(t *testing.T) {
	dirs := Program("/usr/bin/qemu-system-x86_64")
	if len(dirs) == 0 || dirs[0] != "/usr" {
		t.Fatalf("Program: %q, want /usr first", dirs)
	}
	for _, d := range dirs {
		if strings.Count(d, "/") != 1 && d != "/nix/store" {
			t.Errorf("Program: %q is not a top directory", d)
		}
	}
	// A program elsewhere brings its own top directory.
	dir := t.TempDir()
	if got := Program(filepath.Join(dir, "vmm")); !slices.Contains(got, "/tmp") {
		t.Errorf("Program(%s): %q, want /tmp among them", dir, got)
	}
}

// The uid and gid the jailed probe runs as: no user of this machine.
const probeID = 4_000_017

// TestJail runs a shell in a jail, as an unprivileged user, and makes it
// try what a VMM taken over by its guest would: read the host's files,
// another VM's, gain privileges, see other processes, write its read-only
// files. Each must fail, and what the jail gives must work.
func TestJail(t *testing.T) {
	testenv.NeedRoot(t)
	base := t.TempDir()
	own := filepath.Join(base, "run", "vm1")
	other := filepath.Join(base, "run", "vm2")
	vmmDir := filepath.Join(own, "vmm")
	kernel := filepath.Join(base, "images", "vmlinux")
	for _, d := range []string{vmmDir, filepath.Join(other, "vmm"), filepath.Dir(kernel)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, kernel, "kernel", 0o644)
	write(t, filepath.Join(other, "vmm", "console.log"), "vm2's console", 0o644)
	write(t, filepath.Join(own, "started.json"), "root's record", 0o644)
	if err := os.Chown(vmmDir, probeID, probeID); err != nil {
		t.Fatal(err)
	}
	// A setuid-root copy of id: outside the jail it makes the probe's
	// user root (checked below), inside it must not.
	suid := filepath.Join(base, "images", "suid-id")
	idProgram, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	write(t, suid, string(idProgram), 0o755)
	if err := os.Chmod(suid, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(base), base, filepath.Dir(suid)} {
		if err := os.Chmod(d, 0o755); err != nil { // for the probe's user, outside
			t.Fatal(err)
		}
	}
	outside := exec.Command(suid, "-u")
	outside.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: probeID, Gid: probeID}}
	if out, err := outside.Output(); err != nil || string(out) != "0\n" {
		t.Fatalf("the setuid-root program outside the jail: %v: %q, want 0 (is %s on a nosuid mount?)", err, out, base)
	}
	root := filepath.Join(own, "jail")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	j := Jail{Root: root, UID: probeID, GID: probeID, Groups: []uint32{probeID},
		ReadOnly: append(Program("/bin/sh"), kernel, suid),
		Writable: []string{vmmDir},
		Devices:  BaseDevices}

	tests := []struct {
		name   string
		script string
		ok     bool   // the script must succeed (else fail)
		want   string // in its output
		check  func(t *testing.T, out string)
	}{
		{"its user", "id -u; id -g; id -G", true, "4000017\n4000017\n4000017\n", nil},
		{"no /etc to list", "ls /etc", false, "No such file", nil},
		{"no /etc/shadow", "cat /etc/shadow", false, "No such file", nil},
		{"no /home", "ls /home", false, "No such file", nil},
		{"no /root", "ls /root", false, "No such file", nil},
		{"no other VM", "ls " + other, false, "No such file", nil},
		{"only its own VM in the run directory", "ls " + filepath.Dir(own), true, "vm1\n", nil},
		{"only what is bound in its VM's", "ls " + own, true, "vmm\n", nil},
		{"writes its own directory", "echo hi > " + vmmDir + "/console.log && cat " + vmmDir + "/console.log", true, "hi", nil},
		{"reads its kernel", "cat " + kernel, true, "kernel", nil},
		{"cannot write its kernel", "echo x > " + kernel, false, "Read-only file system", nil},
		{"cannot write its root", "echo x > /x", false, "", nil},
		{"cannot write /usr", "touch /usr/x", false, "", nil},
		{"no new privileges", "grep NoNewPrivs /proc/self/status", true, "NoNewPrivs:\t1", nil},
		{"no capabilities at all", "grep Cap /proc/self/status", true,
			"CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000", nil},
		{"its own PID namespace: it is pid 1", "echo $$", true, "1\n", nil},
		{"sees no other process", "ls /proc", true, "", func(t *testing.T, out string) {
			// Itself and, if the shell did not exec ls, the shell.
			var pids []string
			for _, name := range strings.Fields(out) {
				if _, err := strconv.Atoi(name); err == nil {
					pids = append(pids, name)
				}
			}
			if len(pids) == 0 || len(pids) > 2 || pids[0] != "1" {
				t.Errorf("/proc in the jail lists processes %q, want 1 and at most ls", pids)
			}
		}},
		{"signals no host process", "kill -0 " + strconv.Itoa(os.Getpid()), false, "", nil},
		{"no network but loopback", "cat /proc/self/net/dev", true, "lo:", func(t *testing.T, out string) {
			for _, l := range strings.Split(out, "\n")[2:] {
				if name, _, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && name != "lo" {
					t.Errorf("the jail has network interface %s", name)
				}
			}
		}},
		{"no /sys", "ls /sys", false, "No such file", nil},
		{"no host devices", "ls /dev", true, "full\nnull\nrandom\nurandom\nzero\n", nil},
		{"a setuid-root program does not run as root", suid + " -u", true, "4000017\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", tt.script)
			if err := j.Wrap(cmd); err != nil {
				t.Fatal(err)
			}
			out, err := cmd.CombinedOutput()
			got := string(out)
			t.Logf("%s: %v\n%s", tt.script, err, got)
			if strings.Contains(got, Arg0+":") {
				t.Fatalf("the jail was not built: %s", got)
			}
			if tt.ok && err != nil {
				t.Errorf("%s: %v: %s", tt.script, err, got)
			}
			if !tt.ok && err == nil {
				t.Errorf("%s worked in the jail: %s", tt.script, got)
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("%s: output %q, want %q in it", tt.script, got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, got)
			}
		})
	}

	// The host saw nothing of it: its root directory is still empty, and
	// no mount of the jail is in the host's namespace.
	if names, _ := os.ReadDir(root); len(names) != 0 {
		t.Errorf("the jail's root directory on the host holds %v", names)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), root) {
		t.Errorf("the host's mounts show the jail's root %s", root)
	}
}

// TestJailRoot: a program a jail runs as root has only the capabilities
// it was given, on every thread, and with them none to undo the jail:
// no mount, no device node, no way back to the host's root.
func TestJailRoot(t *testing.T) {
	testenv.NeedRoot(t)
	base := t.TempDir()
	share := filepath.Join(base, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(share, "secret"), "guest's", 0o600)
	if err := os.Chown(filepath.Join(share, "secret"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "jail")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	j := Jail{Root: root, Caps: []string{"dac_override", "sys_chroot"},
		ReadOnly: Program("/bin/sh"), Writable: []string{share}, Devices: BaseDevices}
	tests := []struct {
		name   string
		script string
		ok     bool
		want   string
	}{
		// dac_override (bit 1) and sys_chroot (bit 18): 0x40002.
		{"only its capabilities", "grep -E 'Cap(Prm|Eff|Bnd)' /proc/self/status", true,
			"CapPrm:\t0000000000040002\nCapEff:\t0000000000040002\nCapBnd:\t0000000000040002\n"},
		{"uses them: reads a file of another owner", "cat " + share + "/secret", true, "guest's"},
		{"no new privileges", "grep NoNewPrivs /proc/self/status", true, "NoNewPrivs:\t1"},
		{"cannot mount", "mount -t tmpfs none " + share, false, ""},
		{"cannot make a device node", "mknod " + share + "/sda b 8 0", false, ""},
		{"cannot change an owner", "chown 0 " + share + "/secret", false, ""},
		{"sees nothing of the host", "ls /etc /home /root", false, "No such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("/bin/sh", "-c", tt.script)
			if err := j.Wrap(cmd); err != nil {
				t.Fatal(err)
			}
			out, err := cmd.CombinedOutput()
			t.Logf("%s: %v\n%s", tt.script, err, out)
			if strings.Contains(string(out), Arg0+":") {
				t.Fatalf("the jail was not built: %s", out)
			}
			if (err == nil) != tt.ok {
				t.Errorf("%s: %v, want success = %v", tt.script, err, tt.ok)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("%s: output %q, want %q in it", tt.script, out, tt.want)
			}
		})
	}
}

// TestJailPid: the pid the caller starts is the jailed program's, and the
// program runs as its user there.
func TestJailPid(t *testing.T) {
	testenv.NeedRoot(t)
	root := filepath.Join(t.TempDir(), "jail")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	j := Jail{Root: root, UID: probeID, GID: probeID, ReadOnly: Program("/bin/sleep"), Devices: BaseDevices}
	cmd := exec.Command("/bin/sleep", "30")
	if err := j.Wrap(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var status string
	for range 200 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		status = string(b)
		if strings.Contains(status, "Name:\tsleep") {
			break
		}
		exec.Command("/bin/sleep", "0.01").Run()
	}
	for _, want := range []string{
		"Name:\tsleep",
		"Uid:\t4000017\t4000017\t4000017\t4000017",
		"NSpid:\t" + strconv.Itoa(cmd.Process.Pid) + "\t1\n",
		"NoNewPrivs:\t1",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("the jailed program's status lacks %q:\n%s", want, status)
		}
	}
	// Killed from outside, as the supervisor does when all else fails.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("after SIGKILL: %v", err)
	}
}

// TestHelperFails: a jail that cannot be built starts nothing, and says
// why.
func TestHelperFails(t *testing.T) {
	testenv.NeedRoot(t)
	j := Jail{Root: filepath.Join(t.TempDir(), "missing"), UID: probeID, GID: probeID, ReadOnly: Program("/bin/true")}
	cmd := exec.Command("/bin/true")
	if err := j.Wrap(cmd); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "mounting the jail's root") {
		t.Errorf("a jail on a missing root: %v: %s", err, out)
	}
}

func write(t *testing.T, path, data string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
}
