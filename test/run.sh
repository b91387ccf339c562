#!/bin/sh
# run.sh is `make test`: every test tier, with what the tests need around
# them. It fetches Debian's cloud kernel for internal/kernel (once, into a
# cache), starts zfs-fuse for the ZFS tests unless one already answers (and
# then stops it, with the pools tests left, when it ends), runs go vet, and
# runs the tests one package at a time: the end-to-end packages each boot
# emulated VMs, and two of them at once on a small machine only slow both
# down. CI=true turns a skip (no root, a missing tool) into a failure.
#
# Needs root and what make deps test-deps install.
set -eu
cd "$(dirname "$0")/.."

if [ -z "${MICROVM_TEST_KERNEL_ROOT:-}" ]; then
	MICROVM_TEST_KERNEL_ROOT="$(test/fetch-kernel.sh)"
	export MICROVM_TEST_KERNEL_ROOT
fi
if ! zpool list -H >/dev/null 2>&1; then
	test/zfs-fuse.sh start
	trap 'test/zfs-fuse.sh stop' EXIT
fi
go vet ./...
go test -p 1 -count=1 -timeout 40m ./...
