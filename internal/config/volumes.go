package config

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// [vm.NAME.volumes] gives a VM block devices of its own, for what wants a
// disk rather than a shared directory (a database's fsyncs):
//
//	[vm.db.volumes]
//	data = { size = "4G", mount = "/var/lib/postgresql", owner = "postgres" }
//
// Each is a file in the VM's state (STATE_DIR/NAME/volumes/NAME.img,
// sparse, inside the VM's dataset with ZFS, so its snapshots and rollbacks
// take the volumes along), made and formatted (fs, "ext4") the first time,
// attached as a virtio block device, and mounted by the guest's init at
// mount before its services start. A larger size grows the file at the
// next start, and the guest its filesystem; a smaller one is an error.
// owner ("USER" or "USER:GROUP" of the guest, "root" by default) owns the
// new filesystem's root directory, which the mount point becomes.

// Volume is one entry of [vm.NAME.volumes].
type Volume struct {
	Name  string
	Size  int64  // bytes
	Mount string // where the guest mounts it
	FS    string // its filesystem: "ext4"
	Owner string // of its root directory, as the guest names it
	Group string
	At    string // file:line:col of the entry
}

// VolumeFile is where vm keeps the volume called name.
func (vm *VM) VolumeFile(name string) string {
	return filepath.Join(vm.StateDir, "volumes", name+".img")
}

var volumeKeys = []string{"size", "mount", "fs", "owner"}

// MinVolume and MaxVolume bound a volume's size.
const (
	MinVolume = 16 << 20
	MaxVolume = 64 << 40
)

// volumes validates a VM's [vm.NAME.volumes] (nil when it has none).
func (p *parser) volumes(raw *rawEntries, key string) []Volume {
	if raw == nil {
		return nil
	}
	var out []Volume
	mounts := map[string]string{}
	for _, name := range raw.order {
		r := raw.byName[name]
		at := fmt.Sprintf("%s:%d:%d", p.file, r.at.Line, r.at.Col)
		if !isName(name) || len(name) > 20 {
			p.errorf(r.at, "%s: %q is not a volume's name; use lowercase letters, digits and '-' (at most 20), e.g. \"data\"", key, name)
			continue
		}
		v := Volume{Name: name, FS: "ext4", Owner: "root", Group: "root", At: at}
		size, ok := r.vals["size"]
		if !ok {
			p.errorf(r.at, "%s: %q has no size; add size = \"4G\"", key, name)
			continue
		}
		s, ok := p.str(size, fmt.Sprintf("%s: the size of %q", key, name))
		if !ok {
			continue
		}
		n, msg := parseSize(s)
		if msg != "" {
			p.errorf(size.pos, "%s: the size of %q, %q, %s", key, name, s, msg)
			continue
		}
		v.Size = n
		mount, ok := r.vals["mount"]
		if !ok {
			p.errorf(r.at, "%s: %q has no mount; add where the guest mounts it, e.g. mount = \"/var/lib/%s\"", key, name, name)
			continue
		}
		if v.Mount, ok = p.str(mount, fmt.Sprintf("%s: the mount of %q", key, name)); !ok {
			continue
		}
		if msg := checkMount(v.Mount); msg != "" {
			p.errorf(mount.pos, "%s: the mount of %q, %q, %s", key, name, v.Mount, msg)
			continue
		}
		if other, dup := mounts[v.Mount]; dup {
			p.errorf(mount.pos, "%s: %q and %q are both mounted at %s", key, other, name, v.Mount)
			continue
		}
		mounts[v.Mount] = name
		if f, ok := r.vals["fs"]; ok {
			if s, ok := p.str(f, fmt.Sprintf("%s: the fs of %q", key, name)); ok && s != "ext4" {
				p.errorf(f.pos, "%s: the fs of %q is %q; volumes are \"ext4\" (the guest's kernel and tools have it)", key, name, s)
				continue
			}
		}
		if o, ok := r.vals["owner"]; ok {
			s, ok := p.str(o, fmt.Sprintf("%s: the owner of %q", key, name))
			if !ok {
				continue
			}
			user, group, msg := parseOwner(s)
			if msg != "" {
				p.errorf(o.pos, "%s: the owner of %q, %q, %s", key, name, s, msg)
				continue
			}
			v.Owner, v.Group = user, group
			if group == "" {
				v.Group = user
			}
		}
		out = append(out, v)
	}
	return out
}

// checkMount says what is wrong with a volume's mount point, or "": it is
// made in the VM's own trees, since its image is read-only.
func checkMount(path string) string {
	switch tree, rel := GuestTree(path); {
	case !strings.HasPrefix(path, "/") || filepath.Clean(path) != path:
		return "is not a clean absolute path, e.g. \"/var/lib/postgresql\""
	case tree == "" || tree == "etc":
		return "is not under /var, /srv, /home or /root, where the guest can make its mount point (its image is read-only)"
	case rel == "" || strings.Count(rel, "/") == 0 && tree == "var" && (rel == "root" || rel == "home" || rel == "srv"):
		return "is a directory of the VM itself; mount it below, e.g. \"/var/lib/data\""
	case strings.ContainsAny(path, " \t,:"):
		return "has a space, comma or colon, which the kernel command line that carries it cannot"
	}
	return ""
}

// parseSize reads a size such as "4G", "512M" or "1T" (powers of 1024).
func parseSize(s string) (int64, string) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	unit := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			unit = 1 << 10
		case 'M':
			unit = 1 << 20
		case 'G':
			unit = 1 << 30
		case 'T':
			unit = 1 << 40
		}
		if unit > 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	switch {
	case err != nil || unit == 1:
		return 0, "is not a size; write a whole number with its unit, e.g. \"512M\" or \"4G\""
	case n <= 0 || n > MaxVolume/unit:
		return 0, "is out of range; a volume is 16M to 64T"
	case n*unit < MinVolume:
		return 0, "is too small; a volume is 16M at least"
	}
	return n * unit, ""
}
