package virtiofs

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
)

// OverlayView mounts at Dst an overlay of Lowers, uppermost first. Without
// Upper it is read-only: the root filesystem of a layered image (an image
// made from another with storage = "dir"), which the kernel then keeps
// read-only as it does a ReadOnlyView. With Upper and Work it is a VM's
// writable image (image_writable): what the guest writes lands in Upper,
// the layers below stay as they are. nosuid and nodev keep what the image
// or the guest put there inert on the host, as for every view.
//
// Apply is idempotent: an overlay of the same layers already at Dst is
// left alone; anything else there is unmounted first.
type OverlayView struct {
	Lowers      []string
	Upper, Work string
	Dst         string
}

func (a *OverlayView) options() string {
	o := "lowerdir=" + strings.Join(a.Lowers, ":")
	if a.Upper != "" {
		o += ",upperdir=" + a.Upper + ",workdir=" + a.Work
	}
	return o
}

func (a *OverlayView) flags() uintptr {
	f := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if a.Upper == "" {
		f |= unix.MS_RDONLY
	}
	return f
}

func (a *OverlayView) String() string {
	ro := "ro,"
	if a.Upper != "" {
		ro = ""
	}
	return fmt.Sprintf("mkdir -p %s && mount -t overlay overlay -o %snosuid,nodev,%s %s", a.Dst, ro, a.options(), a.Dst)
}

func (a *OverlayView) Apply() error {
	if len(a.Lowers) == 0 || (a.Upper == "") != (a.Work == "") {
		return fmt.Errorf("making overlay %s: no lower layers, or an upper layer without a work directory", a.Dst)
	}
	for _, d := range []string{a.Dst, a.Upper, a.Work} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("making overlay %s: %w", a.Dst, err)
		}
	}
	m, mounted, err := mountinfo.Lookup(a.Dst)
	if err != nil {
		return fmt.Errorf("making overlay %s: %w", a.Dst, err)
	}
	if mounted && a.same(m) {
		return nil
	}
	if mounted {
		if err := unix.Unmount(a.Dst, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting stale view %s: %w", a.Dst, err)
		}
	}
	if err := unix.Mount("overlay", a.Dst, "overlay", a.flags(), a.options()); err != nil {
		return fmt.Errorf("mounting an overlay of %s on %s: %w", strings.Join(a.Lowers, ", "), a.Dst, err)
	}
	return nil
}

// same reports whether m is this overlay, with the flags it should have.
func (a *OverlayView) same(m mountinfo.Mount) bool {
	lower, _ := mountinfo.Option(m.Super, "lowerdir")
	upper, _ := mountinfo.Option(m.Super, "upperdir")
	ro := false
	for _, o := range strings.Split(m.Options, ",") {
		ro = ro || o == "ro"
	}
	return m.FSType == "overlay" && lower == strings.Join(a.Lowers, ":") && upper == a.Upper && ro == (a.Upper == "")
}
