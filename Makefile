# The README's two commands are `make demo` and `make test`; run them as root.

# microvm-init runs as PID 1 in the guests' initramfs, which has no
# libraries: both binaries are built static, side by side (microvm finds
# microvm-init beside itself).
build:
	CGO_ENABLED=0 go build -o bin/ ./cmd/...

# The seed's 4 microVMs, booted and proven in a sandbox of network namespaces.
demo: build
	bin/microvm demo

# Every test tier, with the test kernel fetched and zfs-fuse started and
# stopped around them (test/run.sh); CI=true turns a skip (no root, a
# missing tool) into a failure. As root, after make deps test-deps.
test:
	test/run.sh

# What a host needs to run VMs, on Debian or Ubuntu.
deps:
	bash .ci/deps

# What the tests add (zfs-fuse among them: not for a host with
# zfsutils-linux).
test-deps: deps
	bash .ci/test-deps

# The benchmarks (bench/README.md), each rewriting its section of
# docs/benchmarks.md; as root, in sandbox namespaces. boot, disk, memory, limits
# and fleet boot real microVMs (minutes each under TCG).
bench:
	go run ./bench apply
	go run ./bench packet
	go run ./bench flush
	go run ./bench boot
	test/zfs-fuse.sh start
	go run ./bench disk
	go run ./bench memory
	go run ./bench metrics
	go run ./bench limits
	go run ./bench fleet

install: build
	install -m 0755 bin/microvm bin/microvm-init /usr/local/bin/

uninstall:
	rm -f /usr/local/bin/microvm /usr/local/bin/microvm-init

.PHONY: build demo test deps test-deps install uninstall bench
