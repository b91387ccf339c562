package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// ZFS is the backend of a dataset per VM, under Host.ZFSDataset.
type ZFS struct{ Host config.Host }

// dataset is what `zfs list` says of one dataset.
type dataset struct {
	mountpoint string // a path, or "legacy", "none"
	mounted    bool
	inert      bool  // setuid=off and devices=off
	refquota   int64 // bytes; 0 for none
	referenced int64 // bytes its files take (not its snapshots): what refquota bounds
}

// vmProps make a VM's dataset ignore setuid bits and device nodes: its
// guest writes them, as root, through virtiofsd (see Protect, which
// checks the mount has them).
var vmProps = []string{"setuid=off", "devices=off"}

// place is a dataset the model needs, made by create, and the directory
// it must be mounted at.
type place struct {
	create *CreateDataset
	dir    string
	vm     *config.VM // a VM's: setuid and devices off (vmProps), and its disk as refquota
}

// refquota is the property that bounds vm's dataset: what its files may
// take, its snapshots not counted (they are the host's choice to keep).
func refquota(vm *config.VM) string { return "refquota=" + config.FormatSize(vm.DiskQuota()) }

// places are where the model's datasets must be, parent first. Children
// inherit the parent's mount point and compression, as they would if a
// person made them with `zfs create`.
func (z *ZFS) places(in *config.Infra) []place {
	h := z.Host
	places := []place{
		{&CreateDataset{
			Name:    h.ZFSDataset,
			Props:   []string{"mountpoint=" + h.StateDir, "compression=on"},
			Parents: strings.Count(h.ZFSDataset, "/") > 1, // pool/a/b: make pool/a too
		}, h.StateDir, nil},
		{&CreateDataset{Name: h.ImagesDataset()}, h.ImagesDir(), nil},
	}
	for i := range in.VMs {
		vm := &in.VMs[i]
		props := append(slices.Clone(vmProps), refquota(vm))
		places = append(places, place{&CreateDataset{Name: h.VMDataset(vm), Props: props}, vm.StateDir, vm})
	}
	return places
}

// zfsHost is what Diff reads of the host: the datasets under the parent,
// and of the directories where the model's datasets go, whether they are
// empty (where one is to be made) or seen as mount points (where one is
// mounted).
type zfsHost struct {
	datasets map[string]dataset
	empty    map[string]bool
	seen     map[string]bool
}

// Diff plans the parent dataset (mounted at state_dir, compression on),
// the images dataset and one dataset per VM, each created only if missing
// and mounted if it is not, and mounts the images' own datasets.
func (z *ZFS) Diff(in *config.Infra) (action.Diff, error) {
	have, err := z.datasets(in)
	if err != nil {
		return action.Diff{}, err
	}
	o := &zfsHost{datasets: have, empty: map[string]bool{}, seen: map[string]bool{}}
	for _, p := range z.places(in) {
		d, ok := have[p.create.Name]
		switch {
		case !ok:
			if o.empty[p.dir], err = isEmptyDir(p.dir); err != nil {
				return action.Diff{}, fmt.Errorf("checking %s before creating %s: %w", p.dir, p.create.Name, err)
			}
		case d.mounted:
			if o.seen[p.dir], err = seen(p.dir); err != nil {
				return action.Diff{}, err
			}
		}
	}
	return z.diff(in, o)
}

// diff compares the model's datasets with what was read of the host.
func (z *ZFS) diff(in *config.Infra, o *zfsHost) (action.Diff, error) {
	h := z.Host
	var d action.Diff
	known := map[string]bool{}
	for _, p := range z.places(in) {
		name := p.create.Name
		known[name] = true
		ds, ok := o.datasets[name]
		switch {
		case !ok:
			if !o.empty[p.dir] {
				return action.Diff{}, inTheWay(p.dir, name)
			}
			d.Setup = append(d.Setup, p.create)
		case filepath.Clean(ds.mountpoint) != p.dir:
			return action.Diff{}, mountedElsewhere(in, name, ds.mountpoint, p.dir)
		case !ds.mounted:
			d.Setup = append(d.Setup, &MountDataset{Name: name})
		case !o.seen[p.dir]:
			return action.Diff{}, notSeen(name, p.dir)
		}
		if ok && p.vm != nil && !ds.inert {
			for _, prop := range vmProps {
				d.Setup = append(d.Setup, &SetProp{Name: name, Prop: prop})
			}
		}
		if ok && p.vm != nil && ds.refquota != p.vm.DiskQuota() {
			if want := p.vm.DiskQuota(); ds.referenced > want {
				// zfs refuses a refquota below what is there.
				d.Warnings = append(d.Warnings, fmt.Sprintf("%s holds %s, more than its disk = %q%s: its limit stays %s until it holds less, or disk is raised", p.vm.Name, size(ds.referenced), config.FormatSize(p.vm.Limits.DiskBytes), withVolumes(p.vm), quotaText(ds.refquota)))
			} else {
				d.Setup = append(d.Setup, &SetProp{Name: name, Prop: refquota(p.vm)})
			}
		}
	}

	// The images' datasets, made by `microvm image`, are mounted too.
	var images []string
	for name, ds := range o.datasets {
		if path.Dir(name) == h.ImagesDataset() && config.IsImageDir(path.Base(name)) && !ds.mounted {
			images = append(images, name)
		}
	}
	sort.Strings(images)
	for _, name := range images {
		d.Setup = append(d.Setup, &MountDataset{Name: name})
	}

	// Datasets of VMs that left the file keep their data, as the dir
	// backend keeps their directories; say so at each plan.
	for name, ds := range o.datasets {
		if !known[name] && path.Dir(name) == h.ZFSDataset {
			d.Warnings = append(d.Warnings, fmt.Sprintf("dataset %s (%s) is not a VM of %s; its data is kept (zfs destroy -r %s deletes it)", name, ds.mountpoint, in.File, name))
		}
	}
	sort.Strings(d.Warnings)
	return d, nil
}

// datasets lists the filesystems under the parent dataset, which may not
// exist yet. An error explains a host without ZFS tools or without the pool.
func (z *ZFS) datasets(in *config.Infra) (map[string]dataset, error) {
	h := z.Host
	for _, tool := range []string{"zfs", "zpool"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, setupError(in, fmt.Sprintf("this host has no %s command", tool), true)
		}
	}
	out, err := run("zfs", "list", "-H", "-o", "name,mountpoint,mounted,setuid,devices", "-t", "filesystem", "-r", h.ZFSDataset)
	if err != nil {
		if _, perr := run("zpool", "list", "-H", "-o", "name", h.ZFSPool()); perr != nil {
			return nil, setupError(in, fmt.Sprintf("the pool %s is not available (%v)", h.ZFSPool(), perr), false)
		}
		if !strings.Contains(err.Error(), "does not exist") {
			return nil, fmt.Errorf("listing datasets under %s: %w", h.ZFSDataset, err)
		}
		return map[string]dataset{}, nil // the pool is there, the parent not yet
	}
	have := map[string]dataset{}
	for _, line := range lines(out) {
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			return nil, fmt.Errorf("listing datasets under %s: unexpected line %q", h.ZFSDataset, line)
		}
		have[f[0]] = dataset{mountpoint: f[1], mounted: f[2] == "yes", inert: f[3] == "off" && f[4] == "off"}
	}
	// The VMs' quotas, in bytes (zfs list has no -p in every zfs).
	out, err = run("zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value", "refquota,referenced", h.ZFSDataset)
	if err != nil {
		return nil, fmt.Errorf("reading the quotas under %s: %w", h.ZFSDataset, err)
	}
	for _, line := range lines(out) {
		f := strings.Split(line, "\t")
		ds, ok := have[f[0]]
		if len(f) != 3 || !ok {
			continue
		}
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("reading the quotas under %s: %s of %s is %q, not a number", h.ZFSDataset, f[1], f[0], f[2])
		}
		if f[1] == "refquota" {
			ds.refquota = n
		} else {
			ds.referenced = n
		}
		have[f[0]] = ds
	}
	return have, nil
}

// Quota is vm's dataset's refquota and what it holds, in bytes (0: no
// quota), as info and status --host show them.
func (z *ZFS) Quota(vm *config.VM) (used, limit int64, err error) {
	out, err := run("zfs", "get", "-Hp", "-o", "property,value", "refquota,referenced", z.Host.VMDataset(vm))
	if err != nil {
		return 0, 0, fmt.Errorf("reading the quota of %s: %w", vm.Name, hint(err))
	}
	for _, line := range lines(out) {
		k, v, _ := strings.Cut(line, "\t")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("reading the quota of %s: %s is %q, not a number", vm.Name, k, v)
		}
		if k == "refquota" {
			limit = n
		} else {
			used = n
		}
	}
	return used, limit, nil
}

// size writes bytes for a person, in the unit of disk.
func size(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	default:
		return fmt.Sprintf("%.0fM", float64(b)/(1<<20))
	}
}

func quotaText(b int64) string {
	if b == 0 {
		return "none"
	}
	return config.FormatSize(b)
}

// withVolumes says what vm's volumes add to its disk limit, if any.
func withVolumes(vm *config.VM) string {
	if len(vm.Volumes) == 0 {
		return ""
	}
	return " and " + config.FormatSize(vm.DiskQuota()-vm.Limits.DiskBytes) + " of volumes"
}

// setupError explains what a host needs for storage = "zfs", with the
// commands of the design's step 2: the tools if they are missing, and the
// pool. It is the program's answer to a host without ZFS: it creates no
// pool itself, as a pool takes a whole disk.
func setupError(in *config.Infra, problem string, needTools bool) error {
	h := in.Host
	at := in.Pos("host.zfs_dataset")
	if at == in.File {
		at = in.Pos("host.storage")
	}
	type step struct{ cmd, why string }
	var steps []step
	if needTools {
		steps = append(steps, step{"apt install zfsutils-linux", "Debian (contrib, with zfs-dkms) or Ubuntu"})
	}
	steps = append(steps, step{"zpool create -f " + h.ZFSPool() + " /dev/sdX", "the disk for VM data: this erases it"})

	var b strings.Builder
	fmt.Fprintf(&b, "%s: [host] storage = \"zfs\", but %s.\n", at, problem)
	b.WriteString("ZFS needs its tools and a pool. As in step 2 of the seed's setup:\n\n")
	for _, s := range steps {
		fmt.Fprintf(&b, "  %-36s # %s\n", s.cmd, s.why)
	}
	fmt.Fprintf(&b, "\nthen run microvm plan again: apply creates %s, mounted at %s,\n", h.ZFSDataset, h.StateDir)
	b.WriteString("and a dataset per VM in it. Or set storage = \"dir\" to keep VM data in plain directories.")
	return errors.New(b.String())
}

// inTheWay refuses to mount a dataset over files: ZFS either refuses the
// mount (zfs-fuse, and OpenZFS with overlay=off) or hides the files under
// it (OpenZFS 2's default), and a VM would then start with its data out of
// sight. These files are most likely VM data of storage = "dir".
func inTheWay(dir, ds string) error {
	return fmt.Errorf(`%s already holds files (VM data of storage = "dir"?), and dataset %s is to be mounted there. Move them into the dataset:

  mv %s %s.dir
  microvm apply --host-only
  cp -a %s.dir/. %s/ && rm -r %s.dir`, dir, ds, dir, dir, dir, dir, dir)
}

// mountedElsewhere refuses to move a dataset a person mounted somewhere
// else: data there may be in use.
func mountedElsewhere(in *config.Infra, ds, mountpoint, want string) error {
	return fmt.Errorf("%s: dataset %s is mounted at %s, not at %s where infra.toml's state_dir puts it; set state_dir to match, or move the dataset: zfs set mountpoint=%s %s",
		in.Pos("host.state_dir"), ds, mountpoint, want, want, ds)
}

// Snapshot takes the snapshot vm's-dataset@name. A snapshot of a running
// VM is crash-consistent: what a power cut would leave.
func (z *ZFS) Snapshot(vm *config.VM, name string) error {
	full, err := z.snapshotName(vm, name)
	if err != nil {
		return err
	}
	if _, err := run("zfs", "snapshot", full); err != nil {
		return fmt.Errorf("taking snapshot %s of %s: %w", name, vm.Name, hint(err))
	}
	return nil
}

// Snapshots lists vm's snapshots, oldest first, with their creation time
// and the bytes only they hold, in one zfs call.
func (z *ZFS) Snapshots(vm *config.VM) ([]Snapshot, error) {
	ds := z.Host.VMDataset(vm)
	out, err := run("zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value", "creation,used", ds)
	if err != nil {
		return nil, fmt.Errorf("listing snapshots of %s: %w", vm.Name, hint(err))
	}
	var snaps []Snapshot
	index := map[string]int{}
	for _, line := range lines(out) {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			return nil, fmt.Errorf("listing snapshots of %s: unexpected line %q", vm.Name, line)
		}
		name, ok := strings.CutPrefix(f[0], ds+"@")
		if !ok {
			continue // the dataset itself
		}
		i, ok := index[name]
		if !ok {
			i = len(snaps)
			index[name] = i
			snaps = append(snaps, Snapshot{Name: name, Auto: strings.HasPrefix(name, AutoPrefix)})
		}
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("listing snapshots of %s: %s of %s is %q, not a number", vm.Name, f[1], f[0], f[2])
		}
		switch f[1] {
		case "creation":
			snaps[i].Created = time.Unix(n, 0)
		case "used":
			snaps[i].Used = n
		}
	}
	sortSnapshots(snaps)
	return snaps, nil
}

// Rollback runs zfs rollback -r, which destroys the snapshots taken after
// name: ZFS can only roll a dataset back to its newest snapshot.
func (z *ZFS) Rollback(vm *config.VM, name string) error {
	full, err := z.snapshotName(vm, name)
	if err != nil {
		return err
	}
	if _, err := run("zfs", "rollback", "-r", full); err != nil {
		return fmt.Errorf("rolling %s back to %s: %w", vm.Name, name, hint(err))
	}
	return nil
}

// DestroySnapshot runs zfs destroy on one snapshot. The name it builds
// always has an @, so it can never name the VM's dataset itself.
func (z *ZFS) DestroySnapshot(vm *config.VM, name string) error {
	full, err := z.snapshotName(vm, name)
	if err != nil {
		return err
	}
	if _, err := run("zfs", "destroy", full); err != nil {
		return fmt.Errorf("destroying snapshot %s of %s: %w", name, vm.Name, hint(err))
	}
	return nil
}

// snapshotName is DATASET@name, for a name that is a valid snapshot name
// and nothing more (no @, no /).
func (z *ZFS) snapshotName(vm *config.VM, name string) (string, error) {
	if !isLabel(name) {
		return "", fmt.Errorf("%q is not a snapshot name; they use letters, digits and _ - . :", name)
	}
	return z.Host.VMDataset(vm) + "@" + name, nil
}

// Usage reads `used` of the parent and its children in one zfs call. A
// VM's figure includes its snapshots; the total is everything in the
// parent dataset.
func (z *ZFS) Usage(in *config.Infra) (Usage, error) {
	h := z.Host
	out, err := run("zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,value", "used", h.ZFSDataset)
	if err != nil {
		return Usage{}, fmt.Errorf("reading disk use of %s: %w", h.ZFSDataset, hint(err))
	}
	used := map[string]int64{}
	for _, line := range lines(out) {
		name, v, ok := strings.Cut(line, "\t")
		if !ok {
			return Usage{}, fmt.Errorf("reading disk use of %s: unexpected line %q", h.ZFSDataset, line)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("reading disk use of %s: used of %s is %q, not a number", h.ZFSDataset, name, v)
		}
		used[name] = n
	}
	u := Usage{VMs: map[string]int64{}, Images: used[h.ImagesDataset()], Total: used[h.ZFSDataset]}
	for i := range in.VMs {
		u.VMs[in.VMs[i].Name] = used[h.VMDataset(&in.VMs[i])]
	}
	return u, nil
}

// zfsError is what a zfs or zpool command printed when it failed: it names
// the dataset and the cause, in words a person knows from the shell.
type zfsError struct {
	msg string
	err error // the exit status
}

func (e *zfsError) Error() string { return e.msg }
func (e *zfsError) Unwrap() error { return e.err }

// run runs a zfs or zpool command and returns its standard output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.Join(lines(stderr.String()), "; ")
		if msg == "" {
			msg = fmt.Sprintf("%s %s: %v", name, strings.Join(args, " "), err)
		}
		return string(out), &zfsError{msg: msg, err: err}
	}
	return string(out), nil
}

// hint adds what to do to the one zfs error a person meets in normal use:
// a VM whose dataset the host part of apply has not made yet.
func hint(err error) error {
	var ze *zfsError
	if errors.As(err, &ze) && strings.Contains(ze.msg, "dataset does not exist") {
		return fmt.Errorf("%w (microvm apply --host-only creates the datasets)", err)
	}
	return err
}

// lines splits output into its non-empty lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
