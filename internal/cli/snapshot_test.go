package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// snapshotFile writes an infra.toml with one VM, vm1, and the given extra
// [host] lines, with state and run directories under dir.
func snapshotFile(t *testing.T, dir, host string) string {
	t.Helper()
	f := filepath.Join(dir, "infra.toml")
	body := "[host]\nuplink = \"eth0\"\nstate_dir = \"" + filepath.Join(dir, "state") + "\"\nrun_dir = \"" + filepath.Join(dir, "run") + "\"\n" + host +
		"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n"
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// snapCLI runs the CLI in-process with stdin, and returns stdout and stderr
// together, and the exit status.
func snapCLI(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := Main(args, strings.NewReader(stdin), &out, &out)
	return out.String(), code
}

// TestSnapshotUsage: mistakes are explained before anything is touched.
func TestSnapshotUsage(t *testing.T) {
	file := snapshotFile(t, t.TempDir(), "")
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"snapshot"}, 2, "name one VM, and optionally a label"},
		{[]string{"snapshots", "-f", file, "vm1", "x"}, 2, "name one VM"},
		{[]string{"rollback", "vm1", "--yes", "-f", file}, 1, `snapshots need [host] storage = "zfs"`}, // flags anywhere
		{[]string{"snapshot", "rm", "-f", file, "vm1"}, 2, "name one VM and the snapshots to destroy"},
		{[]string{"snapshot", "rm", "-f", file, "vm1", "x"}, 1, `snapshots need [host] storage = "zfs"`},
		{[]string{"snapshot", "-f", file, "vm9"}, 1, `no VM "vm9" in ` + file},
		{[]string{"snapshot", "-f", file, "vm1"}, 1, file + `: snapshots need [host] storage = "zfs" in infra.toml`},
		{[]string{"rollback", "-f", file, "vm1"}, 1, `snapshots need [host] storage = "zfs"`},
		{[]string{"help", "rollback"}, 0, "Usage: microvm rollback [-f FILE] [--yes] NAME [SNAPSHOT]"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, code := snapCLI(t, "", tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) {
				t.Errorf("got exit %d:\n%s\nwant exit %d and %q", code, out, tt.code, tt.out)
			}
		})
	}
}

// TestSnapshotCommandsZFS: snapshot, snapshots and rollback on real ZFS.
// Rollback asks first, changes nothing when not confirmed, and restores
// the VM's file when confirmed.
func TestSnapshotCommandsZFS(t *testing.T) {
	pool := zfstest.New(t)
	file := snapshotFile(t, pool.Dir, "storage = \"zfs\"\nzfs_dataset = \""+pool.Name+"/microvms\"\n")
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	d, err := storage.For(in.Host).Diff(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.Setup {
		if err := a.Apply(); err != nil {
			t.Fatal(err)
		}
	}
	vm, _ := in.VM("vm1")
	motd := filepath.Join(vm.VarDir, "motd")
	write := func(body string) {
		t.Helper()
		os.MkdirAll(vm.VarDir, 0o755)
		if err := os.WriteFile(motd, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		b, _ := os.ReadFile(motd)
		return string(b)
	}
	mustCLI := func(stdin string, args ...string) string {
		t.Helper()
		out, code := snapCLI(t, stdin, args...)
		if code != 0 {
			t.Fatalf("microvm %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}

	if out := mustCLI("", "snapshots", "-f", file, "vm1"); !strings.Contains(out, "vm1 has no snapshots") {
		t.Errorf("snapshots before any: %s", out)
	}
	if out, code := snapCLI(t, "", "rollback", "-f", file, "vm1"); code != 1 || !strings.Contains(out, "vm1 has no snapshots to roll back to") {
		t.Errorf("rollback without snapshots: exit %d\n%s", code, out)
	}
	write("hello")
	if out := mustCLI("", "snapshot", "-f", file, "vm1", "before"); !strings.Contains(out, "snapshot before of vm1 taken ("+pool.Name+"/microvms/vm1@before)") {
		t.Errorf("snapshot: %s", out)
	}
	if out, code := snapCLI(t, "", "snapshot", "-f", file, "vm1", "auto-mine"); code != 1 || !strings.Contains(out, "marks automatic snapshots") {
		t.Errorf("snapshot called auto-mine: exit %d\n%s", code, out)
	}
	write("broken")
	mustCLI("", "snapshot", "-f", file, "vm1", "later")
	out := mustCLI("", "snapshots", "-f", file, "vm1")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 ||
		!strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "before ") || !strings.HasSuffix(lines[1], "manual") || !strings.HasPrefix(lines[2], "later ") {
		t.Errorf("snapshots:\n%s", out)
	}
	out = mustCLI("", "snapshots", "vm1", "--json", "-f", file)
	checkShape(t, out, snapshotsDoc{})
	if !strings.Contains(out, `"name": "before"`) || !strings.Contains(out, `"automatic": false`) {
		t.Errorf("snapshots --json:\n%s", out)
	}
	mustCLI("", "snapshot", "-f", file, "vm1", "extra")
	if out, code := snapCLI(t, "", "snapshot", "rm", "-f", file, "vm1", "extra", "nope"); code != 1 || !strings.Contains(out, `vm1 has no snapshot "nope"`) {
		t.Errorf("snapshot rm of a missing one: exit %d\n%s", code, out)
	}
	if out := mustCLI("", "snapshot", "rm", "-f", file, "vm1", "extra"); !strings.Contains(out, "snapshot extra of vm1 destroyed") {
		t.Errorf("snapshot rm: %s", out)
	}
	if out := mustCLI("", "snapshots", "-f", file, "vm1"); strings.Contains(out, "extra") {
		t.Errorf("snapshot rm left it:\n%s", out)
	}

	out, code := snapCLI(t, "no\n", "rollback", "-f", file, "vm1", "before")
	for _, want := range []string{"Roll vm1 back to snapshot before, taken ", "These later snapshots are destroyed too: later.", "Type yes to roll back: ", "not confirmed; vm1 is unchanged"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollback answered no: output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 || read() != "broken" {
		t.Errorf("rollback answered no: exit %d, file %q; want 1 and the file unchanged", code, read())
	}
	if out, code := snapCLI(t, "", "rollback", "-f", file, "vm1", "nope"); code != 1 || !strings.Contains(out, `vm1 has no snapshot "nope"; it has: before, later`) {
		t.Errorf("rollback to a missing snapshot: exit %d\n%s", code, out)
	}

	out = mustCLI("yes\n", "rollback", "-f", file, "vm1", "before")
	if !strings.Contains(out, "vm1 rolled back to before") || read() != "hello" {
		t.Errorf("rollback: file %q, output:\n%s", read(), out)
	}
	write("again")
	mustCLI("", "rollback", "-f", file, "--yes", "vm1") // the newest: before
	if read() != "hello" {
		t.Errorf("rollback --yes to the newest: file %q, want hello", read())
	}
}

// TestApplyZFS: the host part of apply makes the datasets before anything
// else, and a second plan has no changes; with the pool missing, plan says
// what to run. In a sandbox namespace, like the other host tests.
func TestApplyZFS(t *testing.T) {
	pool := zfstest.New(t)
	testenv.NeedCommands(t, "ip", "nft", "useradd")
	file := snapshotFile(t, pool.Dir, "storage = \"zfs\"\nzfs_dataset = \""+pool.Name+"/microvms\"\n")
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	sb := sandboxtest.New(t, in)
	inNSWith := func(stdin string, args ...string) (string, int) {
		t.Helper()
		var out bytes.Buffer
		code := -1
		if err := sandbox.Do(sb.Host, func() error { code = Main(args, strings.NewReader(stdin), &out, &out); return nil }); err != nil {
			t.Fatal(err)
		}
		return out.String(), code
	}
	inNS := func(args ...string) (string, int) { t.Helper(); return inNSWith("", args...) }

	out, code := inNS("apply", "--host-only", "-f", file)
	first := "zfs create -o mountpoint=" + in.Host.StateDir + " -o compression=on " + pool.Name + "/microvms"
	if code != 0 || !strings.Contains(out, first+"\nzfs create "+pool.Name+"/microvms/images\nzfs create -o setuid=off -o devices=off -o refquota=20G "+pool.Name+"/microvms/vm1\n") {
		t.Fatalf("apply: exit %d, want the datasets made:\n%s", code, out)
	}
	if out, code := inNS("plan", "--host-only", "-f", file); code != 0 || !strings.Contains(out, "no changes") || strings.Contains(out, "zfs ") {
		t.Errorf("second plan: exit %d, want no changes:\n%s", code, out)
	}

	// destroy deletes the dataset of a VM that left the file, with its
	// snapshots, after saying so.
	ds := pool.Name + "/microvms/vm1"
	if err := os.WriteFile(in.Host.Departed("vm1").Marker(), []byte("microvm VM vm1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("zfs", "snapshot", ds+"@x").Run(); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(t.TempDir(), "left.toml")
	body, _ := os.ReadFile(file)
	if err := os.WriteFile(left, []byte(strings.Replace(string(body), "[vm.vm1]", "[vm.vm2]", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = inNSWith("no\n", "destroy", "--data", "-f", left, "vm1")
	if code != 1 || !strings.Contains(out, "Delete vm1's /etc and /var (ZFS dataset "+ds+" and all its snapshots)?") || !strings.Contains(out, "not confirmed") {
		t.Errorf("destroy answered no: exit %d\n%s", code, out)
	}
	if out, code := inNS("destroy", "--data", "--yes", "-f", left, "vm1"); code != 0 || exec.Command("zfs", "list", ds).Run() == nil {
		t.Errorf("destroy: exit %d, dataset %s still there:\n%s", code, ds, out)
	}

	// teardown --data deletes the whole tree, after saying so.
	out, code = inNSWith("no\n", "teardown", "--data", "-f", file)
	if code != 1 || !strings.Contains(out, "Tear down and delete ZFS dataset "+pool.Name+"/microvms and everything in it:") {
		t.Errorf("teardown --data answered no: exit %d\n%s", code, out)
	}
	if out, code := inNS("teardown", "--data", "--yes", "-f", file); code != 0 || !strings.Contains(out, "zfs destroy -r "+pool.Name+"/microvms  # every VM's /etc and /var, their snapshots, the images") || exec.Command("zfs", "list", pool.Name+"/microvms").Run() == nil {
		t.Errorf("teardown --data: exit %d, want the tree destroyed:\n%s", code, out)
	}

	missing := snapshotFile(t, t.TempDir(), "storage = \"zfs\"\nzfs_dataset = \""+pool.Name+"x/microvms\"\n")
	out, code = inNS("plan", "--host-only", "-f", missing)
	if code != 1 || !strings.Contains(out, "the pool "+pool.Name+"x is not available") || !strings.Contains(out, "zpool create -f "+pool.Name+"x /dev/sdX") {
		t.Errorf("plan without the pool: exit %d\n%s", code, out)
	}
}

func TestHumanSize(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{812 << 10, "812 KiB"},
		{3<<30 + 400<<20, "3.4 GiB"},
	}
	for _, tt := range tests {
		if got := humanSize(tt.n); got != tt.want {
			t.Errorf("humanSize(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
