package storage

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The structures the kernel reads and writes have the kernel's sizes.
func TestQuotaABI(t *testing.T) {
	if got := unsafe.Sizeof(fsxattr{}); got != 28 {
		t.Errorf("struct fsxattr is %d bytes, want 28", got)
	}
	if got := unsafe.Sizeof(dqblk{}); got != 72 {
		t.Errorf("struct if_dqblk is %d bytes, want 72", got)
	}
}

func TestProjectQuotaString(t *testing.T) {
	in := model(t, "/var/lib/microvms", "", "vm1")
	vm := &in.VMs[0]
	got := (&ProjectQuota{VM: vm}).String()
	id := vm.ProjectID()
	for _, want := range []string{"chattr -R -p ", " +P /var/lib/microvms/vm1 && setquota -P ", " 0 20G 0 1310720 ", "# vm1's disk"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q (project %d)", got, want, id)
		}
	}
}

// QuotaTestEnv, set to 1, runs TestProjectQuotaReal: it needs a kernel
// whose ext4 has project quotas (CONFIG_QFMT_V2), which the machines the
// tests run on lack; test/lifecycle runs this test's binary inside a
// guest, whose Debian kernel has them (TestLifecycle, "disk quota").
const QuotaTestEnv = "MICROVM_TEST_QUOTA"

// TestProjectQuotaReal: on a real ext4 with project quotas (a loop
// device), a VM's state directory gets its project, the data it held
// before included; a process without CAP_SYS_RESOURCE, as virtiofsd is,
// that writes without end is stopped by EDQUOT at the VM's disk; the
// filesystem stays writable for the host and for another VM; plan finds
// the quota in place, and a change of disk applied.
func TestProjectQuotaReal(t *testing.T) {
	if os.Getenv(QuotaTestEnv) != "1" {
		t.Skipf("set %s=1 where ext4 has project quotas; test/lifecycle runs it inside a guest", QuotaTestEnv)
	}
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "mkfs.ext4", "mount", "umount", "dd", "setpriv")
	for _, m := range []string{"loop", "quota_v2"} {
		exec.Command("modprobe", m).Run() // built in, or loaded: mount says if not
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-O", "project,quota", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop,prjquota", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	state := filepath.Join(mnt, "state")
	os.Mkdir(state, 0o755)

	h := config.Host{StateDir: state, Storage: config.StorageDir}
	if why := QuotaCheck(h); why != "" {
		t.Fatalf("QuotaCheck on ext4 with prjquota: %s", why)
	}
	in := model(t, state, "", "qa", "qb")
	for i := range in.VMs {
		in.VMs[i].Limits.DiskBytes = 16 << 20
	}
	qa, qb := &in.VMs[0], &in.VMs[1]
	// qa held 4 MiB before it had a quota, as a VM from before does.
	for _, vm := range in.VMs {
		os.MkdirAll(vm.VarDir, 0o755)
		os.Chmod(vm.StateDir, 0o700)
	}
	if err := os.WriteFile(filepath.Join(qa.VarDir, "before"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	for i := range in.VMs {
		vm := &in.VMs[i]
		msg, err := BoundDisk(h, vm)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s", vm.Name, msg)
	}
	used, limit, err := DiskUse(h, qa)
	if err != nil || limit != 16<<20 || used < 4<<20 || used > 5<<20 {
		t.Errorf("qa's use: %d of %d, %v; want its 4 MiB from before counted, of 16 MiB", used, limit, err)
	}

	// A writer as virtiofsd is: root, without CAP_SYS_RESOURCE (which
	// alone lets a process past a quota): EDQUOT.
	write := func(vm *config.VM, name string, mib int) (string, error) {
		cmd := exec.Command("setpriv", "--bounding-set=-sys_resource", "dd", "if=/dev/zero", "of="+filepath.Join(vm.VarDir, name), "bs=1M", "count="+strconv.Itoa(mib), "conv=fsync")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := write(qa, "fill", 64)
	t.Logf("qa writes 64 MiB: %v\n%s", err, out)
	if err == nil || !strings.Contains(out, "Disk quota exceeded") {
		t.Errorf("qa wrote past its disk: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(qa.VarDir, "fill")); err != nil {
		t.Error(err)
	} else if fi.Size() > 12<<20 {
		t.Errorf("qa's fill is %d bytes; want at most 12 MiB (16 MiB less the 4 it held)", fi.Size())
	}
	// The host and another VM write on.
	if out, err := write(qb, "data", 8); err != nil {
		t.Errorf("qb cannot write after qa filled its disk: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(mnt, "host"), make([]byte, 16<<20), 0o644); err != nil {
		t.Errorf("the host cannot write after qa filled its disk: %v", err)
	}

	// plan: in place; a larger disk is one action, applied live.
	d := &Dir{Host: h}
	diff, err := d.Diff(in)
	if err != nil || len(diff.Setup) != 0 || len(diff.Warnings) != 0 {
		t.Errorf("plan with the quotas in place: %q, %q, %v", strs(diff.Setup), diff.Warnings, err)
	}
	qa.Limits.DiskBytes = 32 << 20
	diff, err = d.Diff(in)
	if err != nil || len(diff.Setup) != 1 {
		t.Fatalf("plan after qa's disk grew: %q, %v", strs(diff.Setup), err)
	}
	t.Logf("plan: %s", diff.Setup[0])
	if err := diff.Setup[0].Apply(); err != nil {
		t.Fatal(err)
	}
	if _, limit, err := DiskUse(h, qa); err != nil || limit != 32<<20 {
		t.Errorf("qa's limit after apply: %d, %v; want 32 MiB", limit, err)
	}
	if out, err := write(qa, "more", 8); err != nil {
		t.Errorf("qa cannot write after its disk grew: %v\n%s", err, out)
	}
}

// On a filesystem without project quotas (a tmpfs, and on the machines
// the tests run on, their ext4), the check says so, and a VM's disk is
// not enforced: BoundDisk sets nothing.
func TestQuotaUnavailable(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	in := model(t, dir, "", "vm1")
	vm := &in.VMs[0]
	why := QuotaCheck(in.Host)
	if !strings.Contains(why, "is on tmpfs, which has no project quotas here") {
		t.Errorf("QuotaCheck on tmpfs: %q", why)
	}
	os.Mkdir(vm.StateDir, 0o700)
	if msg, err := BoundDisk(in.Host, vm); err != nil || msg != "" {
		t.Errorf("BoundDisk on tmpfs: %q, %v; want nothing done (the plan's warning says why)", msg, err)
	}
	if _, limit, err := DiskUse(in.Host, vm); err != nil || limit != 0 {
		t.Errorf("DiskUse on tmpfs: limit %d, %v; want none", limit, err)
	}
}
