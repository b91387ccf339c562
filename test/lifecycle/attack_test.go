package lifecycle

// Attacks on the host by a guest and by a VMM (issue 11), made for real on
// the running VMs of TestLifecycle, sharing its boots.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// listing renders the files under dir (names, modes, owners, contents),
// to see whether anything there changed.
func listing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s %s %d:%d", p, fi.Mode(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", data)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	return b.String()
}

// guestSymlinks makes, inside the guest (with ssh, a shell command run as
// root in the guest), symlinks from its own /etc and /var to host paths
// next to its state: the host's admin key directory, and a directory of
// secrets made for the test. Among them the names an older version kept
// its seeding progress under, which it followed at the next start, moving
// the host's files into the guest. The returned function, called after
// the VM has started again, checks that nothing on the host moved or
// changed, and removes the test's directory.
func guestSymlinks(t *testing.T, ssh func(string) result, stateDir string) func(t *testing.T) {
	id := make([]byte, 4)
	rand.Read(id)
	secrets := filepath.Join(stateDir, "host-secrets-"+hex.EncodeToString(id))
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(secrets, "secret"), []byte("the host's\n"), 0o600)
	admin := filepath.Join(stateDir, "admin")
	before := listing(t, admin) + listing(t, secrets)
	script := strings.Join([]string{
		"ln -s " + admin + " /etc/.microvm-seed-done",
		"ln -s " + secrets + " /var/.microvm-seed-done",
		"ln -s " + secrets + " /etc/.microvm-seed-copy",
		"ln -sf " + filepath.Join(secrets, "secret") + " /etc/hostname",
		"ln -s " + admin + " /var/root/host-admin",
		"sync",
	}, " && ")
	if r := ssh(script); r.code != 0 {
		t.Fatalf("making the guest's symlinks: exit %d: %s", r.code, r.out)
	}
	return func(t *testing.T) {
		defer os.RemoveAll(secrets)
		if after := listing(t, admin) + listing(t, secrets); after != before {
			t.Errorf("host files changed after the guest's symlinks and a restart:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		// The guest's own files are as the guest left them, but for the
		// one the program manages, which it replaced.
		r := ssh("readlink /etc/.microvm-seed-done /var/.microvm-seed-done; cat /etc/hostname; ls /etc | grep -c secret")
		if want := admin + "\n" + secrets + "\nlc1\n0\n"; r.out != want {
			t.Errorf("in the guest after the restart: %q, want %q", r.out, want)
		}
	}
}

// vmmUser is the uid and gid the VMM process pid runs as.
func vmmUser(t *testing.T, pid int) (uint32, uint32) {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var uid, gid uint64
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && (k == "Uid" || k == "Gid") {
			n, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 32)
			if k == "Uid" {
				uid = n
			} else {
				gid = n
			}
		}
	}
	if uid == 0 {
		t.Fatalf("the VMM (pid %d) runs as root", pid)
	}
	return uint32(uid), uint32(gid)
}

// vmmAttack is what a compromised VMM of vm does to the files root reads
// back from the VM's run directory: it points the pid files at a victim
// (a process of root's that `microvm down` must not kill) and links the
// supervisor log to a file of the host's (which root would then append
// to). It returns the victim and a check for after the VM has stopped.
func vmmAttack(t *testing.T, vm *config.VM, uid, gid uint32, dir string) func(t *testing.T) {
	victim := exec.Command("sleep", "3600")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { victim.Wait(); close(exited) }()
	hostFile := filepath.Join(dir, "host-file")
	os.WriteFile(hostFile, []byte("the host's\n"), 0o644)
	pid := victim.Process.Pid
	replace := func(name, content string) string {
		p := filepath.Join(vm.RunDir, name)
		return fmt.Sprintf("printf '%%s' '%s' > %s.new && mv -f %s.new %s", content, p, p, p)
	}
	script := strings.Join([]string{
		replace("keeper.pid", fmt.Sprintf("%d\n", pid)),
		replace("started.json", fmt.Sprintf(`{"vmm_pid": %d, "run_pid": %d}`, pid, pid)),
		fmt.Sprintf("rm -f %s; ln -s %s %s", vm.SupervisorLog(), hostFile, vm.SupervisorLog()),
	}, "; ")
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	t.Logf("as the VMM's user (uid %d), in %s: %v\n%s", uid, vm.RunDir, err, out)
	if err == nil {
		t.Errorf("as the VMM's user, planting records in %s succeeded; it must be root's alone", vm.RunDir)
	}
	return func(t *testing.T) {
		defer victim.Process.Kill()
		select {
		case <-exited:
			t.Errorf("microvm down signalled the victim (pid %d) whose pid the VMM's user wrote", pid)
		default:
		}
		if b, _ := os.ReadFile(hostFile); string(b) != "the host's\n" {
			t.Errorf("the host's file, which the VMM's user linked as the supervisor log, changed: %q", b)
		}
	}
}

// vmmReach checks, as the VMM's user of one VM, that nothing of another
// VM's is open to it: its run directory, its VMM's directory and sockets,
// its virtiofs sockets; and that it cannot write in its own run directory,
// which is root's, only in its VMM's own.
func vmmReach(t *testing.T, uid, gid uint32, own, other *config.VM) {
	probes := []struct {
		what string
		try  func() error
		ok   bool
	}{
		{"list its own VMM's directory", func() error { _, err := os.ReadDir(own.VMMDir()); return err }, true},
		{"write in its own run directory", func() error { return os.WriteFile(filepath.Join(own.RunDir, "x"), nil, 0o644) }, false},
		{"list another VM's run directory", func() error { _, err := os.ReadDir(other.RunDir); return err }, false},
		{"list another VM's VMM directory", func() error { _, err := os.ReadDir(other.VMMDir()); return err }, false},
		{"connect to another VM's QMP socket", func() error { return dial(other.ControlSocket()) }, false},
		{"connect to another VM's virtiofs socket", func() error { return dial(other.ShareSocket("etc")) }, false},
		{"read another VM's console log", func() error { _, err := os.ReadFile(other.ConsoleLog()); return err }, false},
	}
	for _, p := range probes {
		err := testenv.AsUser(uid, gid, nil, p.try)
		if (err == nil) != p.ok {
			t.Errorf("as %s's VMM user (uid %d): %s: %v; want allowed = %v", own.Name, uid, p.what, err, p.ok)
		}
	}
}

func dial(path string) error {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
	}
	return err
}

// vmmJail checks the jail of a running VMM (process pid, of own, running as
// uid:gid; package jail) from outside, by its process's status and
// namespaces, and from inside: a shell run as the VMM's user in the VMM's
// own namespaces and root (nsenter) reaches for the host's files and
// another VM's, as a guest that took over the VMM would.
func vmmJail(t *testing.T, h config.Host, pid int, uid, gid uint32, own, other *config.VM) {
	p := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(p + "/status")
	if err != nil {
		t.Fatal(err)
	}
	status := string(b)
	for _, want := range []string{
		"NoNewPrivs:\t1\n",
		"NSpid:\t" + strconv.Itoa(pid) + "\t1\n", // process 1 of its own PID namespace
		"CapEff:\t0000000000000000\n",
		"CapBnd:\t0000000000000000\n",
		"Seccomp:\t2\n", // QEMU's -sandbox
	} {
		if !strings.Contains(status, want) {
			t.Errorf("the VMM's status lacks %q:\n%s", want, status)
		}
	}
	for _, ns := range []string{"mnt", "pid", "net", "ipc"} {
		vmmNS, err1 := os.Readlink(p + "/ns/" + ns)
		ours, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 != nil || err2 != nil || vmmNS == ours {
			t.Errorf("the VMM's %s namespace %s is the host's (%s) (%v, %v)", ns, vmmNS, ours, err1, err2)
		}
	}
	if env, _ := os.ReadFile(p + "/environ"); len(env) > 0 {
		t.Errorf("the VMM has an environment: %q", env)
	}

	probes := []struct {
		script  string
		ok      bool
		want    []string // in the output
		notWant []string
	}{
		{"ls /etc", false, nil, nil},
		{"cat /etc/shadow", false, nil, nil},
		{"ls /home", false, nil, nil},
		{"ls /root", false, nil, nil},
		{"ls /sys", false, nil, nil},
		{"ls " + other.RunDir, false, nil, nil},
		{"ls " + other.StateDir, false, nil, nil},
		{"ls " + own.StateDir, false, nil, nil}, // its guest's /etc and /var: virtiofsd's, not the VMM's
		{"ls " + filepath.Dir(h.AdminKey()), false, nil, nil},
		{"ls " + filepath.Dir(own.RunDir), true, []string{own.Name}, []string{other.Name}},
		{"ls " + own.RunDir, true, []string{"vmm", "virtiofs-etc.sock"}, []string{"started.json", "supervisor.log", "run.lock", "console.log"}},
		{"ls " + own.VMMDir(), true, []string{"qmp.sock", "console.sock"}, nil},
		{"cat /proc/1/cmdline", true, []string{"qemu-system-x86_64"}, nil},
		{"ls /proc", true, []string{"1\n"}, nil},
		{"ls /dev", true, []string{"null", "urandom"}, []string{"net", "tty", "sda", "vda", "mem"}},
		{"cat /proc/self/net/dev", true, []string{"lo:"}, []string{"eth0", "vm-", "br-"}},
		{"echo x > " + filepath.Join(own.VMMDir(), "x"), true, nil, nil},
		// Its console log is the supervisor's, written from a pipe: the
		// VMM can neither rewrite nor grow it past its cap.
		{"echo x >> " + own.ConsoleLog(), false, nil, nil},
		{"echo x > /x", false, nil, nil},
	}
	for _, pr := range probes {
		cmd := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--mount", "--pid", "--net", "--ipc",
			"--root", "--wd", "--setuid", fmt.Sprint(uid), "--setgid", fmt.Sprint(gid), "--", "/bin/sh", "-c", pr.script)
		out, err := cmd.CombinedOutput()
		t.Logf("in %s's VMM jail, as uid %d: %s: %v\n%s", own.Name, uid, pr.script, err, out)
		if (err == nil) != pr.ok {
			t.Errorf("in %s's VMM jail: %s: %v; want success = %v", own.Name, pr.script, err, pr.ok)
		}
		for _, w := range pr.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("in %s's VMM jail: %s: output lacks %q", own.Name, pr.script, w)
			}
		}
		for _, w := range pr.notWant {
			if strings.Contains(string(out), w) {
				t.Errorf("in %s's VMM jail: %s: output has %q", own.Name, pr.script, w)
			}
		}
	}
}

// guestDevices: the guest's root makes device nodes in its /etc and /var,
// which live on the host: its virtiofsd, without CAP_MKNOD (package
// virtiofs, Caps), refuses; a FIFO, which needs no privilege, works.
func guestDevices(t *testing.T, ssh func(string) result, vm *config.VM) {
	r := ssh("mknod /var/tmp/mvm-sda b 8 0 2>/dev/null && echo made sda; mknod /etc/mvm-zero c 1 5 2>/dev/null && echo made zero; " +
		"mkfifo /var/tmp/mvm-fifo && echo fifo; rm -f /var/tmp/mvm-fifo")
	if r.out != "fifo\n" {
		t.Errorf("in the guest, making device nodes in /etc and /var: exit %d, %q; want only the FIFO made", r.code, r.out)
	}
	for _, p := range []string{filepath.Join(vm.VarDir, "tmp", "mvm-sda"), filepath.Join(vm.EtcDir, "mvm-zero")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("the guest made %s on the host", p)
		}
	}
}
