package storage

// Moves between two hosts, each a real zfs-fuse pool (package zfstest)
// with its own zfs_dataset and state_dir.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
)

// twoHosts makes two hosts on their own pools, each with its datasets
// made as apply makes them: the source has vm1, the target another VM.
func twoHosts(t *testing.T) (src, dst config.Host) {
	t.Helper()
	pools := zfstest.Pools(t, 2)
	a := zfsModel(t, pools[0], "", "vm1")
	b := zfsModel(t, pools[1], "", "other")
	apply(t, a)
	apply(t, b)
	return a.Host, b.Host
}

// move sends vm from src to dst through a pipe, as the mover relays it.
func move(src, dst config.Host, vm, snap, base string) error {
	pr, pw := io.Pipe()
	sent := make(chan error, 1)
	go func() {
		err := Send(src, vm, snap, base, pw)
		pw.CloseWithError(err)
		sent <- err
	}()
	rerr := Receive(dst, vm, false, pr)
	pr.CloseWithError(errors.New("receive ended")) // the sender stops too
	return errors.Join(<-sent, rerr)
}

// tree describes every file under dir: type, mode, owner, and its content
// or link target.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", info.Mode(), st.Uid, st.Gid)
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case info.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d bytes sha256 %x", len(b), sha256.Sum256(b))
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, step, a, b string) {
	t.Helper()
	ta, tb := tree(t, a), tree(t, b)
	if reflect.DeepEqual(ta, tb) {
		return
	}
	var diff []string
	for k, v := range ta {
		if tb[k] != v {
			diff = append(diff, fmt.Sprintf("%s: %q, got %q", k, v, tb[k]))
		}
	}
	for k, v := range tb {
		if _, ok := ta[k]; !ok {
			diff = append(diff, fmt.Sprintf("%s: not in the source, got %q", k, v))
		}
	}
	sort.Strings(diff)
	t.Fatalf("%s: %s and %s differ:\n%s", step, a, b, strings.Join(diff, "\n"))
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func wantMoveSnapshots(t *testing.T, step string, h config.Host, vm string, want ...string) {
	t.Helper()
	got, err := MoveSnapshots(h, vm)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: move snapshots of %s in %s: got %q, %v; want %q", step, vm, h.ZFSDataset, got, err, want)
	}
}

// TestMove moves vm1 from a to b whole, then its changes, then back from
// b to a from the snapshot both kept: the data arrives intact each time
// (contents, owners, modes with setuid, symlinks, deletions), mounted at
// the target's state_dir, inert (setuid and devices off), with only the
// newest move snapshot kept on the receiving side.
func TestMove(t *testing.T) {
	a, b := twoHosts(t)
	vmA, vmB := a.Departed("vm1"), b.Departed("vm1")

	wantMoveSnapshots(t, "before", b, "vm1")
	write(t, filepath.Join(vmA.EtcDir, "hostname"), []byte("vm1\n"))
	write(t, filepath.Join(vmA.VarDir, "lib", "big"), random(1<<20))
	write(t, filepath.Join(vmA.VarDir, "lib", "gone"), []byte("deleted later"))
	odd := filepath.Join(vmA.VarDir, "odd")
	write(t, odd, []byte("odd"))
	if err := os.Chown(odd, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(odd, 0o4751); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", filepath.Join(vmA.EtcDir, "link")); err != nil {
		t.Fatal(err)
	}

	// A volume: a sparse file in the VM's dataset, which arrives whole
	// without taking its size on disk.
	volume := filepath.Join("volumes", "data.img")
	write(t, filepath.Join(vmA.StateDir, volume), nil)
	if err := os.Truncate(filepath.Join(vmA.StateDir, volume), 32<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(vmA.StateDir, volume), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("superblock"), 16<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	if err := move(a, b, "vm1", "move-1", ""); err != nil {
		t.Fatalf("whole: %v", err)
	}
	sameTree(t, "whole", vmA.StateDir, vmB.StateDir)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(vmB.StateDir, volume), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 32<<20 || st.Blocks*512 > 1<<20 {
		t.Errorf("the volume on the target: %d bytes in %d blocks, want 32 MiB in a few", st.Size, st.Blocks)
	}
	wantMoveSnapshots(t, "whole, source", a, "vm1", "move-1")
	wantMoveSnapshots(t, "whole, target", b, "vm1", "move-1")
	ds := b.VMDataset(vmB)
	for prop, want := range map[string]string{"mounted": "yes", "mountpoint": vmB.StateDir, "setuid": "off", "devices": "off"} {
		if got := zfsGet(t, prop, ds); got != want {
			t.Errorf("%s of %s: got %q, want %q", prop, ds, got, want)
		}
	}

	// The VM runs on a meanwhile: its changes follow.
	write(t, filepath.Join(vmA.EtcDir, "hostname"), []byte("changed\n"))
	write(t, filepath.Join(vmA.VarDir, "new"), random(4096))
	if err := os.Remove(filepath.Join(vmA.VarDir, "lib", "gone")); err != nil {
		t.Fatal(err)
	}
	if err := move(a, b, "vm1", "move-2", "move-1"); err != nil {
		t.Fatalf("incremental: %v", err)
	}
	sameTree(t, "incremental", vmA.StateDir, vmB.StateDir)
	wantMoveSnapshots(t, "incremental, source", a, "vm1", "move-1", "move-2")
	wantMoveSnapshots(t, "incremental, target", b, "vm1", "move-2")

	// Back to a, which kept its copy and move-2, the common snapshot.
	write(t, filepath.Join(vmB.VarDir, "on-b"), []byte("written on b"))
	if err := move(b, a, "vm1", "move-3", "move-2"); err != nil {
		t.Fatalf("back: %v", err)
	}
	sameTree(t, "back", vmB.StateDir, vmA.StateDir)
	wantMoveSnapshots(t, "back, target", a, "vm1", "move-3")
}

// TestMoveRefuses: each bad move is refused with a clear error and
// changes nothing on the receiving host.
func TestMoveRefuses(t *testing.T) {
	a, b := twoHosts(t)
	vmA := a.Departed("vm1")
	write(t, filepath.Join(vmA.EtcDir, "hostname"), []byte("vm1\n"))
	if err := move(a, b, "vm1", "move-1", ""); err != nil {
		t.Fatal(err)
	}
	// A stream of vm1 as the source sends it, and one as zfs send makes
	// it with extra flags.
	stream := func(args ...string) []byte {
		var buf bytes.Buffer
		if err := Send(a, "vm1", "move-1", "", &buf); err != nil {
			t.Fatal(err)
		}
		if len(args) == 0 {
			return buf.Bytes()
		}
		out, err := exec.Command("zfs", append(append([]string{"send"}, args...), a.VMDataset(vmA)+"@move-1")...).Output()
		if err != nil {
			t.Fatalf("zfs send %q: %v", args, err)
		}
		return out
	}
	whole := stream()
	var incremental bytes.Buffer
	if err := Send(a, "vm1", "move-2", "move-1", &incremental); err != nil {
		t.Fatal(err)
	}
	dirHost := model(t, t.TempDir(), "", "vm1").Host
	elsewhere, noParent := b, b
	elsewhere.StateDir = filepath.Join(t.TempDir(), "state")
	noParent.ZFSDataset = b.ZFSDataset + "-not-made"

	// What each case finds on b before the receive.
	mine := func(vm string) func(t *testing.T) {
		return func(t *testing.T) {
			if err := (&CreateDataset{Name: b.ZFSDataset + "/" + vm}).Apply(); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(b.StateDir, vm, "mine"), []byte("not from a move"))
		}
	}
	dirFiles := func(vm string) func(t *testing.T) {
		return func(t *testing.T) { write(t, filepath.Join(b.StateDir, vm, "mine"), []byte("storage = dir")) }
	}
	tests := []struct {
		name    string
		host    config.Host
		vm      string
		running bool
		setup   func(t *testing.T)
		stream  []byte
		want    string
	}{
		{name: "dir storage", host: dirHost, vm: "d1", stream: whole, want: `needs storage = "zfs"`},
		{name: "bad VM name", host: b, vm: "../etc", stream: whole, want: `"../etc" is not a VM name`},
		{name: "parent mounted elsewhere", host: elsewhere, vm: "s1", stream: whole, want: "is mounted at " + b.StateDir},
		{name: "no parent", host: noParent, vm: "n1", stream: whole, want: "microvm apply --host-only"},
		{name: "running", host: b, vm: "r1", running: true, stream: whole, want: "runs on this host"},
		{name: "dataset not from a move", host: b, vm: "m1", setup: mine("m1"), stream: whole, want: "has no move-* snapshot"},
		{name: "files in the way", host: b, vm: "f1", setup: dirFiles("f1"), stream: whole, want: "already holds files"},
		{name: "whole stream over a copy", host: b, vm: "vm1", stream: whole, want: "the stream is whole"},
		{name: "garbage", host: b, vm: "g1", stream: []byte(strings.Repeat("not a stream ", 10)), want: "not a ZFS send stream"},
		{name: "empty", host: b, vm: "e1", stream: nil, want: "reading the stream"},
		{name: "truncated", host: b, vm: "t1", stream: whole[:len(whole)/2], want: "receiving t1 into"},
		{name: "incremental without base", host: b, vm: "i1", stream: incremental.Bytes(), want: "no copy of i1"},
		{name: "replication stream", host: b, vm: "p1", stream: stream("-R"), want: "replication stream"},
		{name: "properties", host: b, vm: "p2", stream: stream("-p"), want: "carries properties"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			before := treeIfAny(t, tt.host, tt.vm)
			snapsBefore, _ := MoveSnapshots(tt.host, tt.vm)
			err := Receive(tt.host, tt.vm, tt.running, bytes.NewReader(tt.stream))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
			if after := treeIfAny(t, tt.host, tt.vm); !reflect.DeepEqual(after, before) {
				t.Errorf("files changed:\nbefore %q\nafter  %q", before, after)
			}
			if tt.host.Storage == config.StorageZFS && config.IsVMName(tt.vm) {
				if snaps, _ := MoveSnapshots(tt.host, tt.vm); !reflect.DeepEqual(snaps, snapsBefore) {
					t.Errorf("snapshots: got %q, want %q", snaps, snapsBefore)
				}
				if ds := tt.host.VMDataset(tt.host.Departed(tt.vm)); tt.setup == nil && tt.vm != "vm1" && exists(ds) {
					t.Errorf("dataset %s was made", ds)
				}
			}
		})
	}

	sends := []struct {
		name           string
		host           config.Host
		vm, snap, base string
		want           string
	}{
		{"dir storage", dirHost, "vm1", "move-9", "", `needs storage = "zfs"`},
		{"no dataset", a, "nope", "move-9", "", "no dataset"},
		{"not a move snapshot", a, "vm1", "auto-1", "", "not the name of a move's snapshot"},
		{"bad snapshot", a, "vm1", "move-a@b", "", "not the name of a move's snapshot"},
		{"bad base", a, "vm1", "move-9", "before/x", "not the name of a move's snapshot"},
		{"missing base", a, "vm1", "move-9", "move-8", "no snapshot"},
		{"base is the snapshot", a, "vm1", "move-1", "move-1", "is the snapshot sent"},
	}
	for _, tt := range sends {
		t.Run("send "+tt.name, func(t *testing.T) {
			err := Send(tt.host, tt.vm, tt.snap, tt.base, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
	wantMoveSnapshots(t, "after refused sends", a, "vm1", "move-1", "move-2")
	if _, err := MoveSnapshots(dirHost, "vm1"); !errors.Is(err, ErrMoveNeedsZFS) {
		t.Errorf("move snapshots with storage = dir: got %v, want ErrMoveNeedsZFS", err)
	}
}

// treeIfAny is tree of vm's state directory on h, nil if there is none.
func treeIfAny(t *testing.T, h config.Host, vm string) map[string]string {
	t.Helper()
	if !config.IsVMName(vm) {
		return nil
	}
	dir := h.Departed(vm).StateDir
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	return tree(t, dir)
}
