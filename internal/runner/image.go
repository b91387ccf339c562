package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
)

// The image a VM boots is the one its image key names as the host has it
// when the VM starts: for a declared image, its current version. The
// supervisor records which (vm.ImageRecord) from before it mounts the
// image's view until the VM has stopped, so that the view of a version
// another VM still boots is never taken away: a view is unmounted when its
// last user stops (releaseImage), or by `image rm` and apply's prune once
// no supervisor records it. Both take the views lock.

// imageRecord is what vm.ImageRecord holds.
type imageRecord struct {
	Dir   string `json:"dir"`   // the image's directory under STATE_DIR/images
	Pid   int    `json:"pid"`   // the supervisor's
	Start uint64 `json:"start"` // its start time (package proc)
}

// bootImage resolves the image vm boots now, and says what to do when it
// is not there.
func bootImage(in *config.Infra, vm *config.VM) (*image.Ref, error) {
	r, err := image.Resolve(in, vm.Image)
	if err != nil {
		return nil, err
	}
	if r.Built(in.Host) {
		return r, nil
	}
	if r.Decl != nil {
		return nil, fmt.Errorf("%s: image %s is not built as %s declares it; microvm apply builds it (or microvm image build %s)", vm.Name, vm.Image, in.File, vm.Image)
	}
	return nil, fmt.Errorf("%s: image %s is not built (%s is missing); run: microvm image build %s", vm.Name, vm.Image, in.Host.ImageVmlinux(r.Dir), vm.Image)
}

// lockViews takes the lock under which views are mounted, recorded and
// released.
func lockViews(h config.Host) (unlock func(), err error) {
	dir, err := safedir.OpenPrivateAll(filepath.Dir(h.ViewsLock()))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	f, err := dir.Lock(filepath.Base(h.ViewsLock()), true)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// useImage records that vm boots the image in dir, and mounts the image's
// view (and, with image_writable, the VM's own overlay over it).
func useImage(h config.Host, vm *config.VM, run *safedir.Dir, dir string) error {
	unlock, err := lockViews(h)
	if err != nil {
		return err
	}
	defer unlock()
	self := proc.Self()
	b, err := json.Marshal(imageRecord{Dir: dir, Pid: self.Pid, Start: self.Start})
	if err != nil {
		return err
	}
	if err := run.WriteFile(filepath.Base(vm.ImageRecord()), append(b, '\n'), 0o644); err != nil {
		return err
	}
	lowers, err := image.Lowers(h, dir)
	if err != nil {
		return err
	}
	if len(lowers) == 1 {
		err = (&virtiofs.ReadOnlyView{Src: lowers[0], Dst: h.ImageView(dir)}).Apply()
	} else {
		err = (&virtiofs.OverlayView{Lowers: lowers, Dst: h.ImageView(dir)}).Apply()
	}
	if err != nil || !vm.ImageWritable {
		return err
	}
	w := &virtiofs.OverlayView{Lowers: lowers, Upper: vm.ImageUpper(), Work: vm.ImageWork(), Dst: vm.RootView()}
	if err := w.Apply(); err != nil {
		return fmt.Errorf("%w; image_writable needs a state_dir that overlayfs can keep an upper layer on (ext4, XFS, tmpfs; ZFS from 2.2)", err)
	}
	return nil
}

// releaseImage undoes useImage when vm has stopped: it unmounts the VM's
// writable overlay, and the image's view if no other VM boots that image.
func releaseImage(h config.Host, vm *config.VM, run *safedir.Dir, dir string) error {
	unlock, err := lockViews(h)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	if vm.ImageWritable {
		errs = append(errs, unmountIfMounted(vm.RootView()))
	}
	errs = append(errs, run.Remove(filepath.Base(vm.ImageRecord())))
	users, err := imageUsers(h)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if len(users[dir]) == 0 {
		errs = append(errs, unmountIfMounted(h.ImageView(dir)))
	}
	return errors.Join(errs...)
}

// ReleaseUnused unmounts the view of each image in dirs that no VM's
// supervisor records, so that it can be removed; it returns the images
// still in use, with their VMs.
func ReleaseUnused(h config.Host, dirs []string) (inUse map[string][]string, err error) {
	unlock, err := lockViews(h)
	if err != nil {
		return nil, err
	}
	defer unlock()
	users, err := imageUsers(h)
	if err != nil {
		return nil, err
	}
	inUse = map[string][]string{}
	for _, d := range dirs {
		if len(users[d]) > 0 {
			inUse[d] = users[d]
			continue
		}
		if err := unmountIfMounted(h.ImageView(d)); err != nil {
			return nil, err
		}
	}
	return inUse, nil
}

// ImageUsers returns, for each image directory, the VMs whose supervisor
// runs with it.
func ImageUsers(h config.Host) (map[string][]string, error) {
	unlock, err := lockViews(h)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return imageUsers(h)
}

func imageUsers(h config.Host) (map[string][]string, error) {
	out := map[string][]string{}
	entries, err := os.ReadDir(h.RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || !config.IsVMName(e.Name()) {
			continue
		}
		vm := h.Departed(e.Name())
		b, err := safedir.ReadPrivate(vm.ImageRecord())
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var r imageRecord
		if json.Unmarshal(b, &r) != nil || !(proc.ID{Pid: r.Pid, Start: r.Start}).Alive() {
			continue // a supervisor that died without releasing
		}
		out[r.Dir] = append(out[r.Dir], vm.Name)
	}
	return out, nil
}

func unmountIfMounted(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmounting %s: %w", dir, err)
}
