package metrics

import (
	"context"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// What takes long to read is read in the background and kept: the disk
// use of every VM (a walk of its trees, or one zfs command), its
// snapshots (a zfs command per VM), and Tailscale's routes (tailscaled's
// local API). A scrape reports the last values, so it takes the same time
// whatever is on the disks, and runs no command.

// How often the slow parts are read again.
var (
	DiskEvery      = 5 * time.Minute
	TailscaleEvery = 30 * time.Second
)

type slowSample struct {
	disk      map[string]int64 // by VM
	snapshots map[string]int   // by VM, with ZFS
	images    int64
	total     int64
	hasDisk   bool
	diskAt    time.Time
	tailscale *tailscale.Report
	errs      map[string]error
}

// slowCopy is the last slow sample. Its maps are replaced, never changed,
// so the copy may keep them.
func (r *Reader) slowCopy() slowSample {
	r.slowMu.Lock()
	defer r.slowMu.Unlock()
	return r.slow
}

// RefreshDisk measures the disk use of every VM, the images and all of
// state_dir, and counts each VM's snapshots where the storage has them.
func (r *Reader) RefreshDisk() error {
	in, err := r.Model()
	if in == nil {
		return err
	}
	b := storage.For(in.Host)
	u, err := b.Usage(in)
	snaps := map[string]int{}
	if in.Host.Storage == config.StorageZFS {
		for i := range in.VMs {
			if list, err := b.Snapshots(&in.VMs[i]); err == nil {
				snaps[in.VMs[i].Name] = len(list)
			}
		}
	}
	r.slowMu.Lock()
	defer r.slowMu.Unlock()
	r.slow.errs = withErr(r.slow.errs, "disk", err)
	if err != nil {
		return err
	}
	r.slow.disk, r.slow.snapshots = u.VMs, snaps
	r.slow.images, r.slow.total, r.slow.hasDisk, r.slow.diskAt = u.Images, u.Total, true, time.Now()
	return nil
}

// RefreshTailscale reads where the VM subnets stand in the tailnet.
func (r *Reader) RefreshTailscale() {
	in, _ := r.Model()
	if in == nil {
		return
	}
	var rep *tailscale.Report
	if in.Host.Tailscale.Enabled != config.TailscaleOff {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rep = tailscale.Status(ctx, in)
		cancel()
	}
	r.slowMu.Lock()
	r.slow.tailscale = rep
	r.slowMu.Unlock()
}

// Refresh reads the slow parts now, then every DiskEvery and
// TailscaleEvery, until stop is closed. A VM that starts or stops has its
// disk measured again soon after (it is seeded at its first start, and
// its guest writes at boot), at most every DiskGap.
func (r *Reader) Refresh(stop <-chan struct{}) {
	disk := time.NewTicker(DiskEvery)
	defer disk.Stop()
	ts := time.NewTicker(TailscaleEvery)
	defer ts.Stop()
	r.RefreshTailscale()
	measure := func() {
		_ = r.RefreshDisk() // kept in the sample's errors
	}
	measure()
	last, pending := time.Now(), false
	for {
		var later <-chan time.Time
		if pending {
			later = time.After(time.Until(last.Add(DiskGap)))
		}
		select {
		case <-stop:
			return
		case <-disk.C:
		case <-later:
		case <-r.kicks():
			if time.Since(last) < DiskGap {
				pending = true
				continue
			}
		case <-ts.C:
			r.RefreshTailscale()
			continue
		}
		measure()
		last, pending = time.Now(), false
	}
}

// DiskGap is the least time between two measures of the disk.
var DiskGap = 10 * time.Second

// kicks is the channel Read signals a change of state on.
func (r *Reader) kicks() chan struct{} {
	r.slowMu.Lock()
	defer r.slowMu.Unlock()
	if r.kick == nil {
		r.kick = make(chan struct{}, 1)
	}
	return r.kick
}

// changed tells Refresh that a VM started or stopped, if it listens.
func (r *Reader) changed(states string) {
	r.slowMu.Lock()
	same := states == r.states
	r.states = states
	r.slowMu.Unlock()
	if same {
		return
	}
	select {
	case r.kicks() <- struct{}{}:
	default:
	}
}

// withErr returns errs (a fresh map) with err under key, or without key
// when err is nil.
func withErr(errs map[string]error, key string, err error) map[string]error {
	out := map[string]error{}
	for k, v := range errs {
		out[k] = v
	}
	delete(out, key)
	if err != nil {
		out[key] = err
	}
	return out
}
