package storage

// The data path of `microvm move` (docs/fleet.md, "Moving a VM"): the
// source host sends the VM's dataset as a ZFS stream (Send), the mover
// relays it, and the target host receives it into the dataset its own
// infra.toml names (Receive). Each move takes a snapshot called move-LABEL;
// the newest one both hosts have is the base of the next incremental send.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// MovePrefix starts the name of every snapshot a move takes.
const MovePrefix = "move-"

// ErrMoveNeedsZFS is the answer of every move operation on a host with
// storage = "dir".
var ErrMoveNeedsZFS = errors.New(`moving a VM needs storage = "zfs" on both hosts; with storage = "dir" a VM's data is plain directories, which cannot be sent while it runs. Set [host] storage = "zfs" (docs/fleet.md), or copy the data yourself: stop the VM (microvm down VM), copy STATE_DIR/VM with rsync -aHAX --numeric-ids to the other host, and place it there with microvm fleet place VM --to HOST --without-data`)

// CheckMoveSnapshot returns an error unless name is move- and a label.
func CheckMoveSnapshot(name string) error {
	label, ok := strings.CutPrefix(name, MovePrefix)
	if !ok || !isLabel(label) {
		return fmt.Errorf("%q is not the name of a move's snapshot: it must be %q and a label of letters, digits and _ - . :, e.g. \"move-20260101-120000\"", name, MovePrefix)
	}
	return nil
}

// movable checks what every move operation needs: storage = "zfs" and a
// valid VM name. It returns the VM's paths as this host derives them.
func movable(h config.Host, vm string) (*config.VM, error) {
	if h.Storage != config.StorageZFS {
		return nil, ErrMoveNeedsZFS
	}
	if !config.IsVMName(vm) {
		return nil, fmt.Errorf("%q is not a VM name", vm)
	}
	return h.Departed(vm), nil
}

// MoveSnapshots lists the move-* snapshots of vm's dataset on this host,
// oldest first; none if the dataset does not exist.
func MoveSnapshots(h config.Host, vm string) ([]string, error) {
	v, err := movable(h, vm)
	if err != nil {
		return nil, err
	}
	if !exists(h.VMDataset(v)) {
		return nil, nil
	}
	return moveSnapshots(h, v)
}

func moveSnapshots(h config.Host, v *config.VM) ([]string, error) {
	snaps, err := (&ZFS{Host: h}).Snapshots(v)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range snaps {
		if strings.HasPrefix(s.Name, MovePrefix) {
			out = append(out, s.Name)
		}
	}
	return out, nil
}

// Send writes to w the ZFS stream of vm's dataset at snapshot snap, which
// it takes if it does not exist: whole, or, when base is not "", the
// changes since snapshot base (zfs send -i). The stream holds the VM's
// etc, var and volumes, and no properties: the target sets its own.
func Send(h config.Host, vm, snap, base string, w io.Writer) error {
	v, err := movable(h, vm)
	if err != nil {
		return err
	}
	if err := CheckMoveSnapshot(snap); err != nil {
		return err
	}
	ds := h.VMDataset(v)
	if !exists(ds) {
		return fmt.Errorf("sending %s: this host has no dataset %s, so no data of %s to send", vm, ds, vm)
	}
	args := []string{"send"}
	if base != "" {
		if err := CheckMoveSnapshot(base); err != nil {
			return err
		}
		if base == snap {
			return fmt.Errorf("sending %s: the base %s is the snapshot sent; name an older one", vm, base)
		}
		if !snapExists(ds + "@" + base) {
			return fmt.Errorf("sending %s: it has no snapshot %s (%s@%s) to send the changes since; send the whole dataset (no base)", vm, base, ds, base)
		}
		args = append(args, "-i", ds+"@"+base)
	}
	if !snapExists(ds + "@" + snap) {
		if _, err := run("zfs", "snapshot", ds+"@"+snap); err != nil {
			return fmt.Errorf("taking snapshot %s of %s: %w", snap, vm, err)
		}
	}
	cmd := exec.Command("zfs", append(args, ds+"@"+snap)...)
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("sending %s@%s: %s", ds, snap, failure(&stderr, err))
	}
	return nil
}

// Receive receives a stream of Send into vm's dataset on this host,
// ZFS_DATASET/VM as this host's [host] settings name it (never a name from
// the stream), mounted at STATE_DIR/VM, then keeps only the newest move-*
// snapshot there, the base of the next move.
//
// It refuses, changing nothing, when running is true (the caller checks,
// holding the host's lock, that the VM does not run on this host); when the
// dataset exists without a move-* snapshot (data that is not a copy from an
// earlier move); when STATE_DIR/VM holds files outside any dataset; and
// when the stream is not a plain stream of one dataset: a replication
// stream (send -R) or one with properties (send -p) could create other
// datasets, or mount one anywhere on this host.
func Receive(h config.Host, vm string, running bool, r io.Reader) error {
	v, err := movable(h, vm)
	if err != nil {
		return err
	}
	ds := h.VMDataset(v)
	if running {
		return fmt.Errorf("receiving %s: it runs on this host, and its data would change under it; stop it here first (microvm down %s)", vm, vm)
	}
	parent, err := run("zfs", "get", "-H", "-o", "value", "mountpoint", h.ZFSDataset)
	if err != nil {
		return fmt.Errorf("receiving %s: this host has no dataset %s yet (%v); run microvm apply --host-only here first", vm, h.ZFSDataset, err)
	}
	if got := filepath.Clean(strings.TrimSpace(parent)); got != h.StateDir {
		return fmt.Errorf("receiving %s: dataset %s is mounted at %s, not at %s where this host's state_dir puts it; set state_dir to match, or move the dataset: zfs set mountpoint=%s %s", vm, h.ZFSDataset, got, h.StateDir, h.StateDir, h.ZFSDataset)
	}
	have := exists(ds)
	if have {
		snaps, err := moveSnapshots(h, v)
		if err != nil {
			return err
		}
		if len(snaps) == 0 {
			return fmt.Errorf("receiving %s: dataset %s exists on this host and has no move-* snapshot, so it is not a copy from an earlier move; it is kept. If its data is not needed, destroy it (zfs destroy -r %s) and move again", vm, ds, ds)
		}
	} else if empty, err := isEmptyDir(v.StateDir); err != nil {
		return fmt.Errorf("receiving %s: %w", vm, err)
	} else if !empty {
		return fmt.Errorf("receiving %s: %s already holds files outside a dataset (VM data of storage = \"dir\"?); move them away and move again", vm, v.StateDir)
	}

	hdr, incremental, err := readBegin(r)
	if err != nil {
		return fmt.Errorf("receiving %s: %w", vm, err)
	}
	if have && !incremental {
		return fmt.Errorf("receiving %s: this host has an older copy (%s) but the stream is whole, not the changes since a snapshot both hosts have; destroy the copy here (zfs destroy -r %s) and move again", vm, ds, ds)
	}
	if !have && incremental {
		// zfs-fuse would even report success, having received nothing.
		return fmt.Errorf("receiving %s: the stream holds the changes since a snapshot, but this host has no copy of %s (%s) to apply them to; send the whole dataset (no base)", vm, vm, ds)
	}
	cmd := exec.Command("zfs", "receive", "-F", ds)
	cmd.Stdin = io.MultiReader(bytes.NewReader(hdr), r)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("receiving %s into %s: %s", vm, ds, failure(&stderr, err))
	}

	if !exists(ds) {
		return fmt.Errorf("receiving %s into %s: zfs receive succeeded but made no dataset", vm, ds)
	}
	// The guest writes its files as root: make them inert here before
	// anything else, as apply makes its datasets.
	for _, p := range vmProps {
		if err := (&SetProp{Name: ds, Prop: p}).Apply(); err != nil {
			return err
		}
	}
	mp, err := run("zfs", "get", "-H", "-o", "value", "mountpoint", ds)
	if err != nil {
		return fmt.Errorf("reading the mount point of %s: %w", ds, err)
	}
	if got := filepath.Clean(strings.TrimSpace(mp)); got != v.StateDir {
		return fmt.Errorf("received %s, but it is to be mounted at %s, not at %s where this host's state_dir puts it; zfs inherit mountpoint %s puts it there", ds, got, v.StateDir, ds)
	}
	if err := (&MountDataset{Name: ds}).Apply(); err != nil {
		return err
	}

	snaps, err := moveSnapshots(h, v)
	if err != nil {
		return err
	}
	for i := 0; i+1 < len(snaps); i++ {
		if _, err := run("zfs", "destroy", ds+"@"+snaps[i]); err != nil {
			return fmt.Errorf("pruning snapshot %s of %s: %w", snaps[i], vm, err)
		}
	}
	return nil
}

// A stream begins with a DRR_BEGIN record: its type (0) and payload
// length, each 32 bits; the magic number, which gives the byte order; the
// version info, whose low two bits say whether it is a plain stream of
// one dataset (1) or a compound one (2: send -R or -p, carrying datasets'
// names and properties); then the creation time, the dataset type and
// flags, and the GUIDs of the snapshot sent and of the one it is an
// increment from (0 for a whole one).
const (
	beginLen       = 56
	backupMagic    = 0x2F5bacbac
	plainStream    = 1
	streamTypeMask = 3
)

// readBegin reads the stream's DRR_BEGIN record up to the GUIDs, checks
// that it starts a plain stream, and returns what it read and whether it
// is incremental.
func readBegin(r io.Reader) (hdr []byte, incremental bool, err error) {
	hdr = make([]byte, beginLen)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, false, fmt.Errorf("reading the stream: %w (did the sending side fail?)", err)
	}
	var order binary.ByteOrder = binary.LittleEndian
	if binary.BigEndian.Uint64(hdr[8:]) == backupMagic {
		order = binary.BigEndian
	}
	if order.Uint32(hdr[0:]) != 0 || order.Uint64(hdr[8:]) != backupMagic {
		return nil, false, errors.New("this is not a ZFS send stream")
	}
	if order.Uint64(hdr[16:])&streamTypeMask != plainStream {
		return nil, false, errors.New("the stream is a replication stream or carries properties (zfs send -R or -p), which could create other datasets or mount one anywhere on this host; only the plain stream microvm fleet send makes is received")
	}
	return hdr, order.Uint64(hdr[48:]) != 0, nil
}

// failure is what a zfs command that failed printed, or its exit status.
func failure(stderr *bytes.Buffer, err error) string {
	if msg := strings.Join(lines(stderr.String()), "; "); msg != "" {
		return msg
	}
	return err.Error()
}
