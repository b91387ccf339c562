#!/bin/sh
# zfs-fuse.sh starts and stops the zfs-fuse daemon for the ZFS tests
# (internal/storage/zfstest), so that they share one daemon instead of each
# starting its own.
#
# Usage: test/zfs-fuse.sh start    start zfs-fuse unless one answers; wait for it
#        test/zfs-fuse.sh stop     destroy the pools tests left behind (mvtest*),
#                                  then stop the daemon if this script started it
#
# Needs: root, /dev/fuse, and the Debian package zfs-fuse.
set -eu

pidfile=/run/microvm-test-zfs-fuse.pid
log=/var/tmp/microvm-test-zfs-fuse.log

answers() { zpool list -H >/dev/null 2>&1; }

# A daemonized zfs-fuse is a child of PID 1, which may not reap it: a
# zombie counts as gone.
alive() {
	[ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

start() {
	if ! command -v zfs-fuse >/dev/null; then
		echo "zfs-fuse.sh: zfs-fuse not found (apt-get install zfs-fuse)" >&2
		exit 1
	fi
	if [ ! -c /dev/fuse ]; then
		modprobe fuse 2>/dev/null || true
	fi
	if [ ! -c /dev/fuse ]; then
		echo "zfs-fuse.sh: /dev/fuse is missing (modprobe fuse; in a container, pass the device in)" >&2
		exit 1
	fi
	# zfs-fuse mounts datasets in its own mount namespace; commands run
	# under `ip netns exec` (the tests' sandboxes) see them only if / is a
	# shared mount, as systemd makes it at boot (zfstest.SharedRoot).
	if ! grep -qE '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / [^ ]+ .*shared:[0-9]+.* - ' /proc/self/mountinfo; then
		mount --make-shared /
	fi
	if answers; then
		echo "zfs-fuse.sh: a zfs-fuse daemon is already running" >&2
		return
	fi
	# A pid file left by a daemon that is gone (a reboot, a killed run)
	# makes zfs-fuse exit at once, silently.
	if [ -f "$pidfile" ] && ! alive "$(cat "$pidfile")"; then
		rm -f "$pidfile"
	fi
	# --fuse-*-timeout 0: Debian's /etc/zfs/zfsrc lets the kernel cache
	# names and attributes for an hour; kernel ZFS has no such cache that
	# could show a file a rollback removed.
	if ! zfs-fuse --no-kstat-mount --fuse-attr-timeout 0 --fuse-entry-timeout 0 \
		--pidfile "$pidfile" >"$log" 2>&1; then
		echo "zfs-fuse.sh: zfs-fuse failed to start; its log:" >&2
		cat "$log" >&2
		exit 1
	fi
	i=0
	until answers; do
		i=$((i + 1))
		if [ "$i" -gt 75 ]; then
			echo "zfs-fuse.sh: zfs-fuse does not answer after 15 s; its log:" >&2
			cat "$log" >&2
			exit 1
		fi
		sleep 0.2
	done
	echo "zfs-fuse.sh: zfs-fuse is running (pid $(cat "$pidfile"))" >&2
}

stop() {
	if answers; then
		for pool in $(zpool list -H -o name | grep '^mvtest' || true); do
			# zfs-fuse may call a pool busy just after unmounting it.
			i=0
			until zpool destroy -f "$pool" 2>/dev/null; do
				i=$((i + 1))
				if [ "$i" -gt 20 ]; then
					echo "zfs-fuse.sh: cannot destroy pool $pool" >&2
					break
				fi
				sleep 0.5
			done
		done
	fi
	if [ ! -f "$pidfile" ]; then
		return # not started here: the system's, or already stopped
	fi
	pid="$(cat "$pidfile")"
	if alive "$pid" && grep -q zfs-fuse "/proc/$pid/comm" 2>/dev/null; then
		kill -TERM "$pid" # it unmounts its file systems and exits
		i=0
		while alive "$pid"; do
			i=$((i + 1))
			if [ "$i" -gt 100 ]; then
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.2
		done
	fi
	rm -f "$pidfile"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
