#!/bin/sh
# fetch-kernel.sh downloads Debian's cloud kernel package and unpacks it, so
# the tests of internal/kernel can run against the real kernel and modules.
#
# Usage: test/fetch-kernel.sh [DIR]    (default: $MICROVM_TEST_KERNEL_CACHE,
#                                       else /var/cache/microvm-test/kernel)
# It prints the unpacked root; point MICROVM_TEST_KERNEL_ROOT at it:
#   export MICROVM_TEST_KERNEL_ROOT="$(test/fetch-kernel.sh)"
# Running it again with the same kernel version does nothing.
set -eu

# Needs: apt-get (with lists from apt-get update), dpkg-deb, depmod (kmod).
if ! command -v depmod >/dev/null; then
	echo "fetch-kernel.sh: depmod not found (apt-get install kmod)" >&2
	exit 1
fi

dir="${1:-${MICROVM_TEST_KERNEL_CACHE:-/var/cache/microvm-test/kernel}}"

# The metapackage depends on exactly one versioned image package, for example
# linux-image-6.1.0-56-cloud-amd64: that is the kernel a new image would get.
pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
	sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1)"
if [ -z "$pkg" ]; then
	echo "fetch-kernel.sh: cannot resolve linux-image-cloud-amd64 (run apt-get update first)" >&2
	exit 1
fi

# .complete is written last, so a root left half-made by a failed run is
# made again from scratch.
root="$dir/$pkg"
if [ ! -f "$root/.complete" ]; then
	rm -rf "$root"
	mkdir -p "$root"
	tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	chown _apt "$tmp" 2>/dev/null || true # apt downloads as _apt when it can
	(cd "$tmp" && apt-get download -q "$pkg" >&2)
	dpkg-deb -x "$tmp"/"$pkg"_*.deb "$root"
	# The package ships no modules.dep: its postinst makes it with depmod,
	# as it does in a real image. Do the same here.
	depmod -b "$root" "${pkg#linux-image-}"
	touch "$root/.complete"
fi
echo "$root"
