package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Kernel is a kernel installed in an image root.
type Kernel struct {
	Version string // as uname -r prints it, e.g. 6.1.0-28-cloud-amd64
	Image   string // the bzImage, ROOT/boot/vmlinuz-VERSION
	Modules string // its module tree, ROOT/usr/lib/modules/VERSION or ROOT/lib/modules/VERSION
}

// Find returns the newest kernel under root that has both an image in
// /boot and a module tree.
func Find(root string) (Kernel, error) {
	images, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return Kernel{}, fmt.Errorf("finding kernels: %w", err)
	}
	var newest Kernel
	for _, image := range images {
		version := strings.TrimPrefix(filepath.Base(image), "vmlinuz-")
		modules := moduleDir(root, version)
		if modules == "" {
			continue // an image left behind by a removed package
		}
		if newest.Version == "" || compareVersions(version, newest.Version) > 0 {
			newest = Kernel{Version: version, Image: image, Modules: modules}
		}
	}
	if newest.Version == "" {
		return Kernel{}, fmt.Errorf("finding kernels: no boot/vmlinuz-VERSION with lib/modules/VERSION under %s", root)
	}
	return newest, nil
}

// moduleDir returns the module tree of version under root, or "".
// usr/lib comes first: in a merged-/usr root (Debian 12) lib is a symlink
// that may be absolute, and would then point into the host.
func moduleDir(root, version string) string {
	for _, dir := range []string{"usr/lib/modules", "lib/modules"} {
		p := filepath.Join(root, dir, version)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
	}
	return ""
}

// compareVersions orders kernel versions the way a person reads them:
// runs of digits compare as numbers, so 6.1.0-10 is newer than 6.1.0-9.
// It returns -1, 0 or +1.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ra, rb := leadingRun(a), leadingRun(b)
		na, errA := strconv.ParseUint(ra, 10, 64)
		nb, errB := strconv.ParseUint(rb, 10, 64)
		switch {
		case errA == nil && errB == nil && na != nb:
			if na < nb {
				return -1
			}
			return 1
		case (errA != nil || errB != nil) && ra != rb:
			return strings.Compare(ra, rb)
		}
		a, b = a[len(ra):], b[len(rb):]
	}
	return strings.Compare(a, b)
}

// leadingRun returns the leading run of digits, or of non-digits, of s.
func leadingRun(s string) string {
	isDigit := func(c byte) bool { return '0' <= c && c <= '9' }
	i := 1
	for i < len(s) && isDigit(s[i]) == isDigit(s[0]) {
		i++
	}
	return s[:i]
}
