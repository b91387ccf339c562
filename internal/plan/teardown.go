package plan

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// Teardown plans the removal of the host part: the VM subnets withdrawn
// from tailscaled (first, while the bridges still show which they are),
// every link the program made (TAPs before bridges), the nftables table,
// and the run directory (its mounts first). It is what Host plans for a
// model with no VMs, less what stays: the VMs' users, IPv4 forwarding (other
// software may rely on it) and state_dir, which the caller removes only
// when asked. The VMs must be stopped before it is applied.
func Teardown(in *config.Infra) (*Plan, error) {
	empty := *in
	empty.VMs = nil
	links, err := hostnet.Diff(&empty)
	if err != nil {
		return nil, err
	}
	// Only what goes: with no VMs, the routes and links of every VM.
	p := &Plan{Actions: append(tailscale.Diff(&empty).Cleanup, links.Cleanup...)}
	if cur, err := firewall.Current(); err != nil {
		return nil, err
	} else if cur != nil {
		p.Actions = append(p.Actions, firewall.Delete{})
	}
	// A run_dir that holds only the lock (which teardown itself takes)
	// is gone with the lock.
	if entries, err := os.ReadDir(in.Host.RunDir); err == nil && !(len(entries) == 1 && entries[0].Name() == filepath.Base(in.Host.LockFile())) && len(entries) > 0 {
		p.Actions = append(p.Actions, &RemoveTree{Dir: in.Host.RunDir, Unmount: true})
	}
	return p, nil
}

// RemoveTree removes Dir and everything in it; rm does not follow
// symlinks. With Unmount (run_dir), what is mounted below Dir (the
// read-only image views) is unmounted first, deepest first; without it
// (state_dir), a mount below Dir stops it. A filesystem mounted at Dir
// itself (a tmpfs for run_dir, a disk for state_dir) is emptied and left
// mounted. Nothing is removed while a mount below Dir is left.
type RemoveTree struct {
	Dir     string
	Unmount bool
	Note    string // why, for the plan
}

func (a *RemoveTree) String() string {
	s := "rm -r " + a.Dir
	if a.Unmount {
		s = "umount -R " + a.Dir + "/*; " + s
	}
	if a.Note != "" {
		s += "  # " + a.Note
	}
	return s
}

func (a *RemoveTree) Apply() error {
	mounts, err := mountinfo.Under(a.Dir)
	if err != nil {
		return err
	}
	slices.Reverse(mounts)
	at := false
	var below []string
	for _, m := range mounts {
		switch {
		case m == a.Dir:
			at = true
		case a.Unmount:
			if err := unix.Unmount(m, 0); err != nil && err != unix.EINVAL {
				return fmt.Errorf("umount %s: %w", m, err)
			}
		default:
			below = append(below, m)
		}
	}
	if a.Unmount {
		// Mounts stacked on one another show up again once the top one
		// is gone: whatever is left stops the removal.
		left, err := mountinfo.Under(a.Dir)
		if err != nil {
			return err
		}
		for _, m := range left {
			if m != a.Dir {
				below = append(below, m)
			}
		}
	}
	if len(below) > 0 {
		return fmt.Errorf("not removing %s: %s mounted under it; unmount it first", a.Dir, strings.Join(below, ", "))
	}
	if !at {
		if err := removeAll(filepath.Dir(a.Dir), filepath.Base(a.Dir)); err != nil {
			return fmt.Errorf("rm -r %s: %w", a.Dir, err)
		}
		return nil
	}
	entries, err := os.ReadDir(a.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := removeAll(a.Dir, e.Name()); err != nil {
			return fmt.Errorf("rm -r %s: %w", a.Dir, err)
		}
	}
	return nil
}

// removeAll removes name in dir and everything under it through
// descriptors (safedir): guests' trees can be deeper than os.RemoveAll has
// descriptors for.
func removeAll(dir, name string) error {
	d, err := safedir.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	return d.RemoveAll(name)
}

var _ action.Action = (*RemoveTree)(nil)
