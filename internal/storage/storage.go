// Package storage keeps the VMs' persistent data: each VM's etc and var
// (config.VM.StateDir) and the shared images, under state_dir. There are two
// backends, chosen by [host] storage in infra.toml:
//
//   - "dir" (the default): plain directories, made when a VM first starts.
//     No snapshots.
//   - "zfs": the design's layout. A parent dataset mounted at state_dir, one
//     child per VM holding its etc and var, made by the host part of apply
//     before a VM first starts, and one per image, made by `microvm image`
//     and read-only once the image is built. The zfs command is
//     driven the way Incus drives it (zfs create -o ..., zfs list -H -o ...,
//     zfs get -Hp ...), so what `microvm plan` prints is what a person would
//     type. A VM's snapshots are snapshots of its dataset.
//
// For the design's setup:
//
//	rpool/microvms                /var/lib/microvms                compression=on; the admin key
//	rpool/microvms/images         /var/lib/microvms/images
//	rpool/microvms/images/debian  /var/lib/microvms/images/debian  one image, readonly=on
//	rpool/microvms/vm1            /var/lib/microvms/vm1            vm1's etc and var; snapshots rpool/microvms/vm1@NAME
//
// The program creates datasets only under zfs_dataset, in the pool it
// names: it never creates or changes a pool, and never changes a dataset it
// finds mounted elsewhere. It says what to do instead.
//
// Snapshots are named by who took them. Automatic ones, taken before a VM
// is restarted with a changed configuration or image (SnapshotBeforeChange),
// are called auto-YYYYMMDD-HHMMSS-REASON and pruned to the newest
// keep_snapshots. A person's (microvm snapshot) carry their label and are
// never pruned.
package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Backend is one way of keeping VM data.
type Backend interface {
	// Diff returns the actions that make the storage of the model exist,
	// in order (Setup), and warnings about data the model no longer names
	// (which is kept). Nothing returned means the host has it all. An
	// error explains what the host lacks and what to do.
	Diff(in *config.Infra) (action.Diff, error)
	// Snapshot takes a snapshot of vm's data called name.
	Snapshot(vm *config.VM, name string) error
	// Snapshots lists vm's snapshots, oldest first.
	Snapshots(vm *config.VM) ([]Snapshot, error)
	// Rollback returns vm's data to the snapshot called name, destroying
	// the snapshots taken after it (see Later). The VM must not be
	// running: its guest would see its files change underneath it.
	Rollback(vm *config.VM, name string) error
	// DestroySnapshot deletes the snapshot of vm called name.
	DestroySnapshot(vm *config.VM, name string) error
	// Usage reports the bytes on disk of each VM, the images, and all.
	Usage(in *config.Infra) (Usage, error)

	// The life of an image (package image makes its files):

	// CheckImages returns an error if no image can be made yet: with
	// ZFS, before apply has made the images' dataset.
	CheckImages() error
	// StageImage readies dir, an empty directory on the images' file
	// system, for the files of the new image name. On ZFS, it mounts a
	// new dataset there.
	StageImage(name, dir string) error
	// StageDerived readies dir for the files of the image name, made
	// from the image base (package image, BuildDeclared). With ZFS,
	// it mounts there a clone of a snapshot of base's dataset: a whole
	// tree, of which only what the build changes takes space. With
	// plain directories, it makes dir for an overlay layer (Layered).
	StageDerived(name, base, dir string) error
	// Layered reports whether images made from another are overlay
	// layers over it, rather than whole trees.
	Layered() bool
	// ImageSize is what the image name takes on disk, each file once;
	// with ZFS, its dataset's used, so a clone counts only its own blocks.
	ImageSize(name string) (int64, error)
	// CommitImage moves the image staged in dir to Host.ImageDir(name).
	// On ZFS, the image's dataset becomes read-only.
	CommitImage(name, dir string) error
	// DiscardImage deletes what StageImage made for an image that is
	// not to be committed; the files in dir go with it on ZFS, and are
	// the caller's to remove with the dir backend.
	DiscardImage(name, dir string) error
	// RemoveImage deletes the image name, which no VM may be using.
	RemoveImage(name string) error

	// The deletion of VM data (microvm destroy, teardown --data):

	// Holds says what holds vm's /etc and /var, or with vm nil every
	// VM's and the images, as the question before deleting it says it.
	Holds(vm *config.VM) string
	// Mounts is how many mounts of its own the backend keeps at vm's
	// state directory: its dataset's with ZFS, none with plain
	// directories, whose files are all there is.
	Mounts(vm *config.VM) int
	// Destroy returns the action that deletes what the backend keeps of
	// vm's data (vm nil: every VM's and the images) besides the files
	// under state_dir, which the caller removes: with ZFS, the datasets
	// and their snapshots. Nil when there is nothing.
	Destroy(vm *config.VM) action.Action
}

// For returns the backend h asks for.
func For(h config.Host) Backend {
	if h.Storage == config.StorageZFS {
		return &ZFS{Host: h}
	}
	return &Dir{Host: h}
}

// ErrNoSnapshots is returned by the dir backend for every snapshot operation.
var ErrNoSnapshots = errors.New(`snapshots need [host] storage = "zfs" in infra.toml; with storage = "dir" a VM's data is plain directories, which have none`)

// Snapshot is one snapshot of a VM's data.
type Snapshot struct {
	Name    string    // what follows the @: a person's label, or auto-...
	Created time.Time // to the second
	Used    int64     // bytes only this snapshot holds: what destroying it frees
	Auto    bool      // taken by SnapshotBeforeChange, and pruned
}

// Usage is disk use in bytes, as `zfs get used` or du count it: blocks
// allocated, after compression. ZFS counts a write once its transaction
// group is committed, within seconds (30 s with zfs-fuse).
type Usage struct {
	VMs    map[string]int64 // each VM's etc and var (on ZFS with its snapshots), by name
	Images int64            // every image under state_dir/images
	Total  int64            // all of state_dir: VMs, images, the admin key, and data of VMs no longer in the file
}

// AutoPrefix starts the name of every automatic snapshot, and of no
// person's snapshot (CheckLabel), so pruning never touches a person's.
const AutoPrefix = "auto-"

// CheckLabel returns an error if label cannot name a person's snapshot.
func CheckLabel(label string) error {
	switch {
	case label == "":
		return errors.New("a snapshot label cannot be empty")
	case len(label) > 64:
		return fmt.Errorf("snapshot label %q is %d characters; use at most 64", label, len(label))
	case strings.HasPrefix(label, AutoPrefix):
		return fmt.Errorf("snapshot label %q starts with %q, which marks automatic snapshots (pruned to the newest keep_snapshots); choose another label", label, AutoPrefix)
	case !isLabel(label):
		return fmt.Errorf("snapshot label %q is invalid; use letters, digits and _ - . :, starting with a letter or digit, e.g. \"before-upgrade\"", label)
	}
	return nil
}

// isLabel reports whether s is safe as the part of a snapshot name after
// the @: what zfs accepts, without the characters (space, %) that would
// make its commands awkward to read or type.
func isLabel(s string) bool {
	if s == "" || !isAlnum(rune(s[0])) {
		return false
	}
	for _, c := range s {
		if !isAlnum(c) && !strings.ContainsRune("_-.:", c) {
			return false
		}
	}
	return true
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// DefaultLabel names a person's snapshot taken without a label: the time,
// in UTC, to the second.
func DefaultLabel(now time.Time) string { return now.UTC().Format("20060102-150405") }

// autoName names an automatic snapshot: the time, in UTC, and the reason.
func autoName(now time.Time, reason string) string {
	return AutoPrefix + now.UTC().Format("20060102-150405") + "-" + reason
}

// now is the clock of automatic snapshot names.
var now = time.Now

// SnapshotBeforeChange takes an automatic snapshot of vm's data, before the
// VM is restarted with a changed configuration or image, then prunes vm's
// automatic snapshots to the newest h.KeepSnapshots. reason says what the
// change is ("update", "apply") and ends the snapshot's name, which is
// returned. With storage "dir", or keep_snapshots = 0, it takes none and
// returns "": the change goes ahead without one, as the file asks.
//
// It is for `microvm update` and `microvm apply` to call for each VM they
// are about to restart, once the VM has stopped, so that the snapshot has
// every write the guest made.
func SnapshotBeforeChange(h config.Host, vm *config.VM, reason string) (string, error) {
	if h.Storage != config.StorageZFS || h.KeepSnapshots == 0 {
		return "", nil
	}
	if !isLabel(reason) {
		return "", fmt.Errorf("taking a snapshot of %s before a change: reason %q cannot be part of a snapshot name", vm.Name, reason)
	}
	b := For(h)
	snaps, err := b.Snapshots(vm)
	if err != nil {
		return "", err
	}
	// Two changes within a second would make the same name: number the
	// later ones, as a person would.
	base := autoName(now(), reason)
	name := base
	for n := 2; slices.ContainsFunc(snaps, func(s Snapshot) bool { return s.Name == name }); n++ {
		name = base + "-" + strconv.Itoa(n)
	}
	if err := b.Snapshot(vm, name); err != nil {
		return "", err
	}
	if _, err := Prune(b, vm, h.KeepSnapshots); err != nil {
		return name, err
	}
	return name, nil
}

// Prune destroys vm's automatic snapshots but the newest keep, and returns
// the names of those it destroyed. A person's snapshots are never pruned.
func Prune(b Backend, vm *config.VM, keep int) ([]string, error) {
	snaps, err := b.Snapshots(vm)
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, s := range toPrune(snaps, keep) {
		if err := b.DestroySnapshot(vm, s.Name); err != nil {
			return gone, fmt.Errorf("pruning snapshots of %s: %w", vm.Name, err)
		}
		gone = append(gone, s.Name)
	}
	return gone, nil
}

// toPrune returns the automatic snapshots of snaps (oldest first) beyond
// the newest keep.
func toPrune(snaps []Snapshot, keep int) []Snapshot {
	var auto []Snapshot
	for _, s := range snaps {
		if s.Auto {
			auto = append(auto, s)
		}
	}
	if keep < 0 {
		keep = 0
	}
	if len(auto) <= keep {
		return nil
	}
	return auto[:len(auto)-keep]
}

// Later returns the snapshots of snaps (oldest first) taken after the one
// called name: those a rollback to it destroys.
func Later(snaps []Snapshot, name string) []Snapshot {
	for i, s := range snaps {
		if s.Name == name {
			return snaps[i+1:]
		}
	}
	return nil
}

// sortSnapshots orders snaps oldest first. zfs lists a dataset's snapshots
// in the order they were taken; creation times, which have whole seconds,
// keep that order among snapshots of the same second.
func sortSnapshots(snaps []Snapshot) {
	sort.SliceStable(snaps, func(i, j int) bool { return snaps[i].Created.Before(snaps[j].Created) })
}

// Dir is the backend of plain directories under Host.StateDir.
type Dir struct{ Host config.Host }

// Diff gives the VMs' state directories their disk limits, as project
// quotas (quota.go), where state_dir's filesystem enforces them, and warns
// where it does not. A VM's directories are made when it first starts
// (package guest seeds them), which sets its quota too (BoundDisk); the
// images directory by the first image.
func (d *Dir) Diff(in *config.Infra) (action.Diff, error) {
	var diff action.Diff
	if len(in.VMs) == 0 {
		return diff, nil
	}
	if why := QuotaCheck(d.Host); why != "" {
		var disks []string
		for _, vm := range in.VMs {
			if s := strconv.Quote(config.FormatSize(vm.Limits.DiskBytes)); !slices.Contains(disks, s) {
				disks = append(disks, s)
			}
		}
		diff.Warnings = append(diff.Warnings, fmt.Sprintf("the VMs' disk limits (disk = %s) cannot be enforced: %s", strings.Join(disks, ", "), why))
		return diff, nil
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		fd, err := openState(vm)
		if errors.Is(err, fs.ErrNotExist) {
			continue // made, with its quota, when it first starts
		}
		if err != nil {
			return diff, err
		}
		a := &ProjectQuota{VM: vm}
		ok, err := a.inPlace(fd)
		unix.Close(fd)
		if err != nil || !ok {
			diff.Setup = append(diff.Setup, a)
		}
	}
	return diff, nil
}

func (d *Dir) Snapshot(vm *config.VM, name string) error        { return ErrNoSnapshots }
func (d *Dir) Snapshots(vm *config.VM) ([]Snapshot, error)      { return nil, ErrNoSnapshots }
func (d *Dir) Rollback(vm *config.VM, name string) error        { return ErrNoSnapshots }
func (d *Dir) DestroySnapshot(vm *config.VM, name string) error { return ErrNoSnapshots }

// Usage adds up the blocks of the files under each directory, as du does.
// A VM's comes from its record when that is recent (VMUsage); so does
// its part of the total.
func (d *Dir) Usage(in *config.Infra) (Usage, error) {
	u := Usage{VMs: map[string]int64{}}
	var err error
	for i := range in.VMs {
		if u.VMs[in.VMs[i].Name], err = VMUsage(&in.VMs[i], UsageMaxAge); err != nil {
			return Usage{}, err
		}
	}
	if u.Images, err = DiskUsage(in.Host.ImagesDir()); err != nil {
		return Usage{}, err
	}
	if u.Total, err = totalUsage(d.Host); err != nil {
		return Usage{}, err
	}
	return u, nil
}

// UsageMaxAge is how long the disk use measured of a VM's etc and var
// stands for it (with plain directories). Measuring walks every file the
// guest has made, and a guest can make millions, or a chain of nested
// directories as deep as its disk allows: status, which a person or a
// monitor may run every few seconds, measures it at most this often.
const UsageMaxAge = 5 * time.Minute

// usageRecord is what vm.UsageRecord holds.
type usageRecord struct {
	Bytes    int64     `json:"bytes"`
	Measured time.Time `json:"measured"`
}

// VMUsage is the disk use of vm's state directory, as DiskUsage counts it:
// the one recorded in vm.UsageRecord if it was measured less than maxAge
// ago, else measured now and recorded. 0 if the directory does not exist.
func VMUsage(vm *config.VM, maxAge time.Duration) (int64, error) {
	d, err := safedir.OpenPrivate(vm.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("measuring disk use of %s: %w", vm.StateDir, err)
	}
	defer d.Close()
	name := filepath.Base(vm.UsageRecord())
	var r usageRecord
	if b, err := d.ReadFile(name); err == nil && json.Unmarshal(b, &r) == nil {
		if age := time.Since(r.Measured); age >= 0 && age < maxAge {
			return r.Bytes, nil
		}
	}
	n, err := diskUsage(d)
	if err != nil {
		return 0, err
	}
	b, _ := json.Marshal(usageRecord{Bytes: n, Measured: time.Now().UTC()}) // plain values: it cannot fail
	_ = d.WriteFile(name, b, 0o600)                                         // one not written is measured again next time
	return n, nil
}

// totalUsage is the disk use of everything under h.StateDir, each VM's
// directory (one with a VM's mark) counted as VMUsage says.
func totalUsage(h config.Host) (int64, error) {
	d, err := safedir.Open(h.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("measuring disk use of %s: %w", h.StateDir, err)
	}
	defer d.Close()
	var vms int64
	n, err := diskUsageSkip(d, func(name string) (bool, error) {
		if !config.IsVMName(name) {
			return false, nil
		}
		vm := h.Departed(name)
		st, err := d.Lstat(filepath.Join(name, filepath.Base(vm.Marker())))
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return false, nil
		}
		b, err := VMUsage(vm, UsageMaxAge)
		vms += b
		return true, err
	})
	return n + vms, err
}

// DiskUsage is the bytes allocated to everything under dir, each file
// once however many hard links it has (images hard-link many files); 0 if
// dir does not exist. It reads the tree through descriptors and follows
// no symlink: VM directories hold whatever their guests put there.
func DiskUsage(dir string) (int64, error) {
	d, err := safedir.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("measuring disk use of %s: %w", dir, err)
	}
	defer d.Close()
	return diskUsage(d)
}

func diskUsage(d *safedir.Dir) (int64, error) {
	return diskUsageSkip(d, func(string) (bool, error) { return false, nil })
}

// diskUsageSkip measures d as DiskUsage does, leaving out the directories
// of d for which skip says so.
func diskUsageSkip(d *safedir.Dir, skip func(name string) (bool, error)) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{} // only files with more than one link: a guest may make millions of files
	var total int64
	add := func(st *unix.Stat_t) {
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			id := inode{st.Dev, st.Ino}
			if seen[id] {
				return
			}
			seen[id] = true
		}
		total += st.Blocks * 512 // st_blocks counts 512-byte units, whatever the file system's block size
	}
	if st, err := d.Stat(); err == nil {
		add(&st)
	}
	err := d.Walk(func(depth int, name string, st *unix.Stat_t) error {
		if depth == 1 && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if ok, err := skip(name); err != nil {
				return err
			} else if ok {
				return fs.SkipDir
			}
		}
		add(st)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring disk use of %s: %w", d.Path(), err)
	}
	return total, nil
}

// isEmptyDir reports whether dir is missing or has nothing in it: where a
// dataset may be mounted without hiding files.
func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return false, err
	}
	return len(names) == 0, nil
}
