package virtiofs

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

const infra = `
[host]
uplink = "eth0"
state_dir = "/var/lib/microvms"
run_dir = "/run/microvm"
user = "microvm"

[vm.vm1]
subnet = "10.1.0.0/24"
image = "debian"
`

func parse(t *testing.T, src string) *config.Infra {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte(src))
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	return in
}

// TestShares proves the three shares are derived from the model: the image
// from its read-only view, /etc and /var from the VM's own directories.
func TestShares(t *testing.T) {
	in := parse(t, infra)
	vm, _ := in.VM("vm1")
	got := Shares(in.Host, vm, vm.Image)
	want := []Share{
		{Tag: "image", Dir: "/run/microvm/images/debian", Socket: "/run/microvm/vm1/virtiofs-image.sock", Group: "microvm-vm1", ReadOnly: true, JailDir: "/run/microvm/vm1/jail"},
		{Tag: "etc", Dir: "/var/lib/microvms/vm1/etc", Socket: "/run/microvm/vm1/virtiofs-etc.sock", Group: "microvm-vm1", JailDir: "/run/microvm/vm1/jail"},
		{Tag: "var", Dir: "/var/lib/microvms/vm1/var", Socket: "/run/microvm/vm1/virtiofs-var.sock", Group: "microvm-vm1", JailDir: "/run/microvm/vm1/jail"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Shares:\ngot  %+v\nwant %+v", got, want)
	}
}

// TestArgs proves each flavour gets its own spelling of the same settings,
// and that --readonly is given only to a daemon that has it.
func TestArgs(t *testing.T) {
	image := Share{Tag: "image", Dir: "/run/microvm/images/debian", Socket: "/run/microvm/vm1/virtiofs-image.sock", Group: "microvm", ReadOnly: true}
	etc := Share{Tag: "etc", Dir: "/var/lib/microvms/vm1/etc", Socket: "/run/microvm/vm1/virtiofs-etc.sock"}
	rust := Daemon{Path: "/usr/libexec/virtiofsd", Flavour: Rust, Version: "1.13.1", Readonly: true}
	oldRust := Daemon{Path: "/usr/libexec/virtiofsd", Flavour: Rust, Version: "1.10.1"}
	c := Daemon{Path: "/usr/lib/qemu/virtiofsd", Flavour: C, Version: "7.2.22"}
	tests := []struct {
		name  string
		d     Daemon
		share Share
		want  string
	}{
		{"rust image", rust, image, "--fd=3 --shared-dir=/run/microvm/images/debian --cache=always --sandbox=chroot --seccomp=kill --modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap --rlimit-nofile=0 --log-level=warn --readonly"},
		{"rust etc", rust, etc, "--fd=3 --shared-dir=/var/lib/microvms/vm1/etc --cache=always --sandbox=chroot --seccomp=kill --modcaps=-mknod:-setfcap --rlimit-nofile=0 --log-level=warn"},
		{"rust without --readonly", oldRust, image, "--fd=3 --shared-dir=/run/microvm/images/debian --cache=always --sandbox=chroot --seccomp=kill --modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap --rlimit-nofile=0 --log-level=warn"},
		{"c image", c, image, "--fd=3 -o source=/run/microvm/images/debian -o cache=always -o sandbox=chroot -o modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap --rlimit-nofile=0 -o log_level=warn"},
		{"c etc", c, etc, "--fd=3 -o source=/var/lib/microvms/vm1/etc -o cache=always -o sandbox=chroot -o modcaps=-mknod:-setfcap --rlimit-nofile=0 -o log_level=warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(tt.d.Args(tt.share), " ")
			if got != tt.want {
				t.Errorf("Args:\ngot  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// fakeDaemon writes a script that answers --version and --help like a
// virtiofsd, and returns its path.
func fakeDaemon(t *testing.T, version, help string, status int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "virtiofsd")
	script := "#!/bin/sh\ncase \"$1\" in\n" +
		"--version) cat <<'EOF'\n" + version + "\nEOF\n;;\n" +
		"--help) cat <<'EOF'\n" + help + "\nEOF\n;;\nesac\n" +
		"exit " + strconv.Itoa(status) + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// Excerpts of what the real daemons print.
const (
	rustHelp = `Launch a virtiofsd backend.

Usage: virtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]

Options:
      --shared-dir <SHARED_DIR>  Shared directory path
      --readonly                 Prevent the guest from making modifications to the filesystem`
	oldRustHelp = `Usage: virtiofsd --shared-dir <SHARED_DIR> --socket-path <SOCKET_PATH> [OPTIONS]

Options:
      --shared-dir <SHARED_DIR>  Shared directory path`
	cVersionText = `virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)
Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers
using FUSE kernel interface version 7.36`
	cHelp = `usage: /usr/lib/qemu/virtiofsd [options]

    -o source=PATH             shared directory tree
    --socket-path=PATH         path for the vhost-user socket`
)

// TestProbe proves detection tells the flavours apart by what they print,
// finds whether the Rust daemon has --readonly, and rejects a binary that
// does not run (the Rust daemon built for a newer glibc fails so).
func TestProbe(t *testing.T) {
	tests := []struct {
		name          string
		version, help string
		status        int
		want          Daemon // Path is filled in
		wantErr       string
	}{
		{name: "rust 1.13", version: "virtiofsd 1.13.1", help: rustHelp, want: Daemon{Flavour: Rust, Version: "1.13.1", Readonly: true}},
		{name: "rust 1.10", version: "virtiofsd 1.10.1", help: oldRustHelp, want: Daemon{Flavour: Rust, Version: "1.10.1"}},
		{name: "c", version: cVersionText, help: cHelp, want: Daemon{Flavour: C, Version: "7.2.22"}},
		{name: "unknown", version: "somefsd 1.0", help: "usage: somefsd", wantErr: "not a virtiofsd"},
		{name: "does not run", version: "virtiofsd: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.39' not found", status: 1, wantErr: "GLIBC_2.39"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fakeDaemon(t, tt.version, tt.help, tt.status)
			got, err := Probe(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Probe: got %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			tt.want.Path = path
			if got != tt.want {
				t.Errorf("Probe:\ngot  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestFindPrefersWorkingDaemon proves Find skips a daemon that does not
// run and takes the next, and says which packages to install when none
// works.
func TestFindPrefersWorkingDaemon(t *testing.T) {
	broken := fakeDaemon(t, "error while loading shared libraries", "", 1)
	c := fakeDaemon(t, cVersionText, cHelp, 0)
	old := Candidates
	t.Cleanup(func() { Candidates = old })

	Candidates = []string{filepath.Join(t.TempDir(), "absent"), broken, c}
	d, err := Find()
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	if d.Path != c || d.Flavour != C {
		t.Errorf("Find: got %+v, want the C daemon at %s", d, c)
	}

	Candidates = []string{broken}
	_, err = Find()
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "qemu-system-common") || !strings.Contains(err.Error(), "shared libraries") {
		t.Errorf("Find with only a broken daemon: got %v, want ErrNotFound naming the packages and why %s was skipped", err, broken)
	}

	Candidates = nil
	if _, err := Find(); !errors.Is(err, ErrNotFound) {
		t.Errorf("Find with nothing installed: got %v, want ErrNotFound", err)
	}
}
