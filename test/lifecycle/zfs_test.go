package lifecycle

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/cli"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestRollbackZFS: a VM whose state is a ZFS dataset writes a file in /var
// and one on its volume; after a snapshot it changes both; rollback (which
// stops the VM, rolls its dataset back and starts it again) brings the
// first versions back, the volume's too, as the guest itself reads them.
// Then the guest writes until its disk is full: it is stopped at its disk
// and its volume's size (the dataset's refquota), and the pool, the
// host's state directory and another VM's dataset stay writable.
func TestRollbackZFS(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64")
	host := imagetest.Debian(t)
	pool := zfstest.New(t)
	run := testenv.RunDir(t, "mvz")
	state := filepath.Join(pool.Dir, "state")
	// The VMM runs as the unprivileged VMM user and opens the kernel under
	// state_dir: the test's directories (mode 0700) must let it through.
	for d := pool.Dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	file := filepath.Join(t.TempDir(), "infra.toml")
	body := fmt.Sprintf("[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\nstorage = \"zfs\"\nzfs_dataset = %q\n"+
		"[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n[vm.zf1]\nsubnet = \"10.7.0.0/24\"\ndisk = \"96M\"\n"+
		"[vm.zf1.volumes]\ndata = { size = \"64M\", mount = \"/var/lib/data\" }\n[vm.zf2]\nsubnet = \"10.8.0.0/24\"\ndisk = \"64M\"\n", state, run, pool.Name+"/microvms")
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("zf1")
	bin := testenv.Binaries(t)
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	mvm := func(args ...string) string {
		t.Helper()
		out, err := sandbox.Command(sb.Host, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("microvm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	defer func() {
		supervise.StopDetached(vm, 90*time.Second)
		if t.Failed() {
			sup, _ := os.ReadFile(vm.SupervisorLog())
			con, _ := os.ReadFile(vm.ConsoleLog())
			t.Logf("supervisor log:\n%s\nconsole (end):\n%s", supervise.Tail(sup, 30), supervise.Tail(con, 20))
		}
	}()

	// The host part makes the datasets, in this mount namespace (zfs-fuse
	// cannot mount inside the private one of `ip netns exec`).
	if err := sandbox.Do(sb.Host, func() error {
		var out strings.Builder
		if code := cli.Main([]string{"apply", "--host-only", "-f", file}, strings.NewReader(""), &out, &out); code != 0 {
			return fmt.Errorf("apply: exit %d\n%s", code, out.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("zfs", "list", "-H", "-o", "name", pool.Name+"/microvms/zf1").CombinedOutput(); !strings.Contains(string(out), "zf1") {
		t.Fatalf("apply made no dataset for zf1: %s", out)
	}
	// The image is the test's cached one, bind-mounted into the pool's
	// images dataset instead of built again.
	img := in.Host.ImageDir("debian")
	if err := os.MkdirAll(img, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(host.ImageDir("debian"), img, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	// After the deferred stop of the VM, before the pool is destroyed.
	t.Cleanup(func() {
		if err := unix.Unmount(img, 0); err != nil {
			t.Errorf("unmounting the image: %v", err)
		}
	})

	ssh := func(cmd string) string {
		t.Helper()
		return strings.TrimSpace(mvm("ssh", "-f", file, "zf1", "--", cmd))
	}
	login := func() {
		t.Helper()
		sandboxtest.Login(t, sb, vm).Close()
	}

	mvm("up", "-f", file, "zf1")
	login()
	if got := ssh("findmnt -no FSTYPE /var/lib/data"); got != "ext4" {
		t.Errorf("zf1's volume at /var/lib/data: %q, want ext4", got)
	}
	ssh("echo first > /var/marker && echo first > /var/lib/data/marker && sync")
	t.Log(mvm("snapshot", "-f", file, "zf1", "before"))
	ssh("echo second > /var/marker && echo second > /var/lib/data/marker && sync")
	out := mvm("rollback", "-f", file, "--yes", "zf1", "before")
	t.Logf("rollback:\n%s", out)
	for _, want := range []string{"zf1 stopped", "zf1 rolled back to", "zf1 started"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollback output lacks %q", want)
		}
	}
	login()
	if got := ssh("cat /var/marker /var/lib/data/marker"); got != "first\nfirst" {
		t.Errorf("after rollback the guest reads /var/marker and its volume's marker = %q, want first and first", got)
	}

	// The guest fills its /var: ZFS stops it at the refquota apply set
	// (its disk, 96M, and its volume's 64M, in a pool of 256M), with
	// EDQUOT.
	if got, _ := exec.Command("zfs", "get", "-H", "-o", "value", "refquota", pool.Name+"/microvms/zf1").Output(); strings.TrimSpace(string(got)) != "160M" {
		t.Errorf("zf1's refquota is %q, want 160M", got)
	}
	fill, err := sandbox.Command(sb.Host, bin, "ssh", "-f", file, "zf1", "--", "head -c 200M /dev/urandom > /var/fill; echo exit $?; ls -l /var/fill").CombinedOutput()
	t.Logf("the guest writes 200M into /var: %v\n%s", err, fill)
	if !strings.Contains(string(fill), "Disk quota exceeded") || strings.Contains(string(fill), "exit 0") {
		t.Errorf("the guest's write past its disk did not fail with EDQUOT:\n%s", fill)
	}
	// The host's state directory, and another VM's, are written on.
	for _, f := range []string{filepath.Join(state, "host-file"), filepath.Join(state, "zf2", "file")} {
		if err := os.WriteFile(f, make([]byte, 16<<20), 0o644); err != nil {
			t.Errorf("after zf1 filled its disk, writing %s: %v", f, err)
		}
	}
	// And the guest itself, once it frees what it wrote.
	if got := ssh("rm /var/fill && echo again > /var/again && cat /var/again"); got != "again" {
		t.Errorf("zf1 after freeing its disk writes %q", got)
	}
	if err := supervise.StopDetached(vm, 90*time.Second); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stopping zf1: %v", err)
	}
}
