package storage

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
)

// The actions of the zfs backend. Each reads as the zfs command it runs,
// and succeeds when its change is already in place.

// CreateDataset creates a ZFS dataset, mounted where its mountpoint
// property (set or inherited) says.
type CreateDataset struct {
	Name    string
	Props   []string // "key=value", passed as -o in this order
	Parents bool     // also create missing parent datasets (-p)
}

func (a *CreateDataset) args() []string {
	args := []string{"create"}
	if a.Parents {
		args = append(args, "-p")
	}
	for _, p := range a.Props {
		args = append(args, "-o", p)
	}
	return append(args, a.Name)
}

func (a *CreateDataset) String() string { return "zfs " + strings.Join(a.args(), " ") }

func (a *CreateDataset) Apply() error {
	if exists(a.Name) {
		return nil
	}
	if _, err := run("zfs", a.args()...); err != nil {
		return fmt.Errorf("creating dataset %s: %w", a.Name, err)
	}
	return visible(a.Name)
}

// SetProp sets one property of a dataset that exists (one per command:
// older zfs commands, zfs-fuse's among them, take only one).
type SetProp struct{ Name, Prop string } // Prop is "key=value"

func (a *SetProp) String() string { return "zfs set " + a.Prop + " " + a.Name }

func (a *SetProp) Apply() error {
	if _, err := run("zfs", "set", a.Prop, a.Name); err != nil {
		return fmt.Errorf("setting %s on %s: %w", a.Prop, a.Name, err)
	}
	return nil
}

// MountDataset mounts a dataset that exists but is not mounted, as after
// a reboot on a host that does not mount ZFS at boot.
type MountDataset struct{ Name string }

func (a *MountDataset) String() string { return "zfs mount " + a.Name }

func (a *MountDataset) Apply() error {
	if mounted(a.Name) {
		return nil
	}
	if _, err := run("zfs", "mount", a.Name); err != nil {
		return fmt.Errorf("mounting dataset %s: %w", a.Name, err)
	}
	return visible(a.Name)
}

// mounted reports whether the dataset name exists and is mounted.
func mounted(name string) bool {
	out, err := run("zfs", "get", "-H", "-o", "value", "mounted", name)
	return err == nil && strings.TrimSpace(out) == "yes"
}

// exists reports whether the dataset name exists.
func exists(name string) bool {
	_, err := run("zfs", "list", "-H", "-o", "name", name)
	return err == nil
}

// snapExists reports whether the snapshot DATASET@NAME exists.
func snapExists(name string) bool {
	_, err := run("zfs", "list", "-H", "-o", "name", "-t", "snapshot", name)
	return err == nil
}

// visible checks that dataset name, which ZFS says it mounted, is mounted
// where this process looks. zfs-fuse mounts in its own daemon's mount
// namespace: a process in another one that does not receive its mounts
// would write VM data, or an image, beside the dataset instead of in it,
// and the zfs command would make a child's mount point there too, where
// the daemon then fails to mount it ("cannot mount ...: Input/output
// error"). That happens under `ip netns exec`, whose private copy of the
// mounts receives nothing on a host whose / is not shared (systemd makes it
// shared at boot; a container or a CI machine may not).
func visible(name string) error {
	out, err := run("zfs", "get", "-H", "-o", "value", "mountpoint", name)
	if err != nil {
		return fmt.Errorf("reading the mount point of %s: %w", name, err)
	}
	return visibleAt(name, strings.TrimSpace(out))
}

func visibleAt(name, dir string) error {
	ok, err := seen(dir)
	if err != nil || ok {
		return err
	}
	return notSeen(name, dir)
}

// seen reports whether dir, a dataset's mount point, is a mount point in
// this process's mount namespace.
func seen(dir string) (bool, error) {
	if !filepath.IsAbs(dir) {
		return true, nil // legacy, none: not ZFS's to mount
	}
	return mountinfo.IsPoint(filepath.Clean(dir))
}

// notSeen explains a dataset ZFS mounted at dir that this process does not
// see there.
func notSeen(name, dir string) error {
	return fmt.Errorf("ZFS mounted dataset %s at %s, but not in the mount namespace this command runs in, which does not receive ZFS's mounts (zfs-fuse mounts in its own; `ip netns exec` gives commands a private copy of the mounts, which receives nothing new where / is not a shared mount): run microvm in the host's mount namespace (nsenter --net=/run/netns/NAME instead of ip netns exec), or make / shared as systemd does at boot (mount --make-shared /)", name, dir)
}
