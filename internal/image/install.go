package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// install adds to the tree at root what the declared image img adds to its
// base: its packages, with apt-get in a chroot, then its files, then its
// commands. It is one shell script, shown in the build's log as it runs,
// run by runTool in a mount namespace of its own: the mounts it makes in
// the tree (/dev, /proc, apt's package cache) go with it, even when it is
// killed. The tree's own apt sources name the mirror its base was
// installed from.
func install(ctx context.Context, h config.Host, img *config.Image, root string, progress io.Writer) error {
	cache := h.PackageCache()
	for _, d := range []string{"archives/partial", "lists/partial"} {
		if err := os.MkdirAll(filepath.Join(cache, d), 0o755); err != nil {
			return fmt.Errorf("making the package cache: %w", err)
		}
	}
	// The files are put in the tree's /tmp first, and installed from
	// there inside the chroot, so that a symlink of the tree on the way
	// to a file's path resolves inside the tree, never on the host.
	const staging = "tmp/microvm-files"
	if err := os.MkdirAll(filepath.Join(root, staging), 0o700); err != nil {
		return err
	}
	for i, f := range img.Files {
		b, err := f.Load()
		if err != nil {
			return fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
		}
		if err := os.WriteFile(filepath.Join(root, staging, fmt.Sprint(i)), b, 0o600); err != nil {
			return err
		}
	}
	script := buildScript(img, root, cache, "/"+staging)
	phasef(progress, "installing into the image, with:\n%s", script)
	if err := runTool(ctx, progress, "/bin/sh", "-c", script); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(root, staging))
}

// buildScript is what install runs, as a person would type it.
func buildScript(img *config.Image, root, cache, files string) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("set -eu")
	line("root=%s", quote(root))
	line(`mount --rbind /dev "$root/dev"`)
	line(`mount -t proc proc "$root/proc"`)
	line(`inroot() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }`)
	if len(img.Packages) > 0 {
		pkgs := make([]string, len(img.Packages))
		for i, p := range img.Packages {
			pkgs[i] = quote(p)
		}
		line(`mount --bind %s "$root/var/cache/apt/archives"`, quote(cache+"/archives"))
		line(`mount --bind %s "$root/var/lib/apt/lists"`, quote(cache+"/lists"))
		line(`cp -L /etc/resolv.conf "$root/etc/resolv.conf"`)
		line(`printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"   # no service starts at build time`)
		line("inroot apt-get -q -o Acquire::Languages=none update")
		line("inroot apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold install %s", strings.Join(pkgs, " "))
		line(`rm -f "$root/etc/resolv.conf" "$root/usr/sbin/policy-rc.d"`)
	}
	for i, f := range img.Files {
		p := quote(f.Path)
		line("inroot mkdir -p %s && inroot rm -f %s && inroot cp %s %s && inroot chown %s:%s %s && inroot chmod %04o %s",
			quote(path.Dir(f.Path)), p, quote(fmt.Sprintf("%s/%d", files, i)), p, quote(f.Owner), quote(f.Group), p, f.Mode, p)
	}
	for _, r := range img.Run {
		line("inroot /bin/sh -ec %s", quote(r))
	}
	return b.String()
}

// quote makes s one word of a shell command line.
func quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-=./:_@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
