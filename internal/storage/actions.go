package storage

import (
	"fmt"
	"strings"
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
	return nil
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
	return nil
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
