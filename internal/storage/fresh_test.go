package storage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestFreshPoolFirstApply: on a pool just made, the first
// `microvm apply --host-only`, run by the real binary under `ip netns exec`
// as every sandbox test runs it, makes and mounts every dataset, and what
// a VM writes lands in its dataset. (zfs-fuse mounts in its own mount
// namespace; this used to fail with "cannot mount ...: Input/output error"
// until a second apply, see visibleAt.)
//
// In a mount namespace that cannot see zfs-fuse's mounts, apply stops with
// an explanation after the first dataset, before making a mount point where
// it does not belong; apply from the host's mount namespace then finishes.
func TestFreshPoolFirstApply(t *testing.T) {
	pool := zfstest.New(t)
	testenv.NeedCommands(t, "ip", "nft", "unshare", "nsenter")
	bin := testenv.Binaries(t)
	write := func(name, dataset string) (*config.Infra, string) {
		file := filepath.Join(pool.Dir, name+".toml")
		src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\nstorage = \"zfs\"\nzfs_dataset = %q\n[host.tailscale]\nenabled = false\n"+
			"[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n",
			filepath.Join(pool.Dir, name), filepath.Join(pool.Dir, name+"-run"), pool.Name+"/"+name)
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		in, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		return in, file
	}
	in, file := write("first", "first")
	sb := sandboxtest.New(t, in)

	out, err := sandbox.Command(sb.Host, bin, "apply", "--host-only", "-f", file).CombinedOutput()
	if err != nil {
		t.Fatalf("the first apply on a fresh pool: %v\n%s", err, out)
	}
	for _, ds := range []string{in.Host.ZFSDataset, in.Host.ImagesDataset(), in.Host.ZFSDataset + "/vm1", in.Host.ZFSDataset + "/vm2"} {
		if got := zfsGet(t, "mounted", ds); got != "yes" {
			t.Errorf("%s mounted = %q after the first apply", ds, got)
		}
	}
	if out, _ := sandbox.Command(sb.Host, bin, "plan", "--host-only", "-f", file).CombinedOutput(); string(out) != "no changes\n" {
		t.Errorf("plan after the first apply:\n%s", out)
	}
	vm1, _ := in.VM("vm1")
	marker := filepath.Join(vm1.StateDir, "marker")
	if out, err := sandbox.Command(sb.Host, "sh", "-c", "echo written > "+marker).CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	// Here, where the dataset is mounted at vm1's directory, the file is
	// there only if it was written into the dataset.
	if b, err := os.ReadFile(marker); err != nil || string(b) != "written\n" {
		t.Errorf("a file written in %s under ip netns exec is not in vm1's dataset: %q %v", vm1.StateDir, b, err)
	}

	// A namespace that receives no mounts at all.
	in2, file2 := write("private", "private")
	blind := exec.Command("unshare", "--mount", "--propagation", "private", "nsenter", "--net=/run/netns/"+sb.Host, bin, "apply", "--host-only", "-f", file2)
	out, err = blind.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "but not in the mount namespace this command runs in") {
		t.Errorf("apply where ZFS's mounts are not seen: %v\n%s\nwant a refusal that explains", err, out)
	}
	if _, err := os.Stat(in2.Host.ImagesDir()); err == nil {
		t.Errorf("%s was made under the parent's mount point, outside the dataset", in2.Host.ImagesDir())
	}
	if out, err := exec.Command("nsenter", "--net=/run/netns/"+sb.Host, bin, "apply", "--host-only", "-f", file2).CombinedOutput(); err != nil {
		t.Errorf("apply again, from the host's mount namespace: %v\n%s", err, out)
	}
	if got := zfsGet(t, "mounted", in2.Host.ZFSDataset+"/vm2"); got != "yes" {
		t.Errorf("after that, vm2's dataset mounted = %q", got)
	}
}
