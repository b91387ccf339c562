package virtiofs

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// Candidates are where distributions install virtiofsd, in the order [Find]
// tries them: the Rust daemon's homes first, then QEMU 7's C daemon.
var Candidates = []string{
	"/usr/libexec/virtiofsd",  // Fedora, RHEL, Debian 13+, Ubuntu 24.04+ (package virtiofsd)
	"/usr/lib/virtiofsd",      // Arch Linux
	"/usr/bin/virtiofsd",      // some distributions, and NixOS through PATH below
	"virtiofsd",               // whatever PATH holds
	"/usr/lib/qemu/virtiofsd", // Debian 12 (package qemu-system-common), the C daemon
}

// ErrNotFound is returned by [Find] when no usable virtiofsd is installed.
var ErrNotFound = errors.New("no usable virtiofsd found; install it: " +
	"Debian 13+ and Ubuntu 24.04+: apt install virtiofsd; " +
	"Debian 12: apt install qemu-system-common (it ships /usr/lib/qemu/virtiofsd); " +
	"Fedora: dnf install virtiofsd; Arch: pacman -S virtiofsd")

// Find returns the first usable daemon among [Candidates]. A binary that is
// there but does not run (the Rust daemon built for a newer glibc than the
// host's, say) is skipped; the error then says why each one was.
func Find() (Daemon, error) {
	var why []string
	seen := map[string]bool{}
	for _, c := range Candidates {
		path, err := exec.LookPath(c)
		if err != nil || seen[path] {
			continue
		}
		seen[path] = true
		d, err := Probe(path)
		if err == nil {
			return d, nil
		}
		why = append(why, err.Error())
	}
	if len(why) > 0 {
		return Daemon{}, fmt.Errorf("%w (%s)", ErrNotFound, strings.Join(why, "; "))
	}
	return Daemon{}, ErrNotFound
}

var (
	// Rust: "virtiofsd 1.13.1" (clap's --version).
	rustVersion = regexp.MustCompile(`^virtiofsd (\d+\.\d+\.\d+\S*)`)
	// C: "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
	cVersion = regexp.MustCompile(`^virtiofsd version (\d+\.\d+\.\d+)`)
)

// Probe runs the binary at path with --version and --help and tells which
// daemon it is: the two flavours spell their version, and their options,
// differently.
func Probe(path string) (Daemon, error) {
	version, err := run(path, "--version")
	if err != nil {
		return Daemon{}, fmt.Errorf("probing %s: %w", path, err)
	}
	help, err := run(path, "--help")
	if err != nil {
		return Daemon{}, fmt.Errorf("probing %s: %w", path, err)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(version), "\n")
	switch {
	case rustVersion.MatchString(first) && strings.Contains(help, "--shared-dir"):
		return Daemon{
			Path:     path,
			Flavour:  Rust,
			Version:  rustVersion.FindStringSubmatch(first)[1],
			Readonly: strings.Contains(help, "--readonly"),
		}, nil
	case cVersion.MatchString(first) && strings.Contains(help, "source=PATH"):
		return Daemon{Path: path, Flavour: C, Version: cVersion.FindStringSubmatch(first)[1]}, nil
	}
	return Daemon{}, fmt.Errorf("probing %s: not a virtiofsd this program knows (--version says %q)", path, first)
}

// run returns what the command printed, on stdout and stderr together: the C
// daemon prints its help on stdout, older builds on stderr.
func run(path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return "", fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, msg)
	}
	return string(out), nil
}
