# The README's two commands are `make demo` and `make test`; run them as root.

# microvm-init runs as PID 1 in the guests' initramfs, which has no
# libraries: both binaries are built static, side by side (microvm finds
# microvm-init beside itself).
build:
	CGO_ENABLED=0 go build -o bin/ ./cmd/...

# The seed's 4 microVMs, booted and proven in a sandbox of network namespaces.
demo: build
	bin/microvm demo

# Every test tier; CI=true turns a skip (no root, a missing tool) into a failure.
# One package at a time (-p 1): the end-to-end packages each boot emulated
# VMs, and two of them at once on a small machine only slow both down.
test:
	go test -p 1 -count=1 -timeout 40m ./...

# What the tests and the demo need, on Debian or Ubuntu.
deps:
	bash .ci/deps

# The benchmarks (bench/README.md), each rewriting its section of
# docs/benchmarks.md; as root, in sandbox namespaces. boot, disk and memory
# boot real microVMs (minutes each under TCG).
bench:
	go run ./bench apply
	go run ./bench packet
	go run ./bench boot
	test/zfs-fuse.sh start
	go run ./bench disk
	go run ./bench memory

install: build
	install -m 0755 bin/microvm bin/microvm-init /usr/local/bin/

.PHONY: build demo test deps install bench
