// Package supervise keeps VMs running: on a host whose PID 1 is systemd, with
// a unit template microvm@.service (so `systemctl status microvm@vm1` and
// `journalctl -u microvm@vm1 -f` work as the design says), a microvms.target,
// and microvm-host.service, which brings the host part back at boot and
// keeps the firewall; elsewhere (containers, CI) with a detached keeper that
// runs `microvm run NAME`, restarts it when it fails, and keeps a pid file
// and a log file in the VM's run directory, and a detached `microvm host`
// that keeps the firewall while VMs run. It also holds the lock that
// commands changing VMs take, and reads whether a recorded process lives.
//
// Words, as everywhere in the code: a VM's supervisor is the `microvm run
// NAME` process (package runner), which runs its virtiofs daemons and VMM;
// what keeps the supervisor running is its systemd unit or, without
// systemd, its keeper; a Manager starts and stops either.
package supervise

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// UnitDir is where apply installs the units; tests point it elsewhere.
var UnitDir = "/etc/systemd/system"

// bootedDir exists when systemd is PID 1 (sd_booted(3)); tests point it
// elsewhere.
var bootedDir = "/run/systemd/system"

// Template, Target and HostUnit are the unit names.
const (
	Template = "microvm@.service"
	Target   = "microvms.target"
	HostUnit = "microvm-host.service"
)

// Unit is the unit of one VM: microvm@NAME.service.
func Unit(name string) string { return "microvm@" + name + ".service" }

// StopTimeout is how long systemd (and the keeper) give the supervisor to
// stop: longer than the guest's own shutdown plus the VMM's hard stop, so
// that a clean shutdown is never cut short.
var StopTimeout = vmm.DefaultGrace + vmm.HardGrace + 25*time.Second

// RestartDelay is how long after a failure the supervisor is started again.
const RestartDelay = time.Second

// Units are the files apply installs, by name.
type Units map[string][]byte

// A VM's unit needs the host part: Requires= and After= microvm-host, so
// at boot a VM starts once its network and firewall are back, and at
// shutdown (or a stop of the host unit) the VMs stop first, each guest
// shut down cleanly before its virtiofs daemons, while the network is
// still there.
var unitTemplate = template.Must(template.New("unit").Parse(`# Written by microvm apply; changes are overwritten.
[Unit]
Description=microVM %i
Requires={{.HostUnit}}
Wants=network-online.target
After={{.HostUnit}} network-online.target
PartOf={{.Target}}
StartLimitIntervalSec=60
StartLimitBurst=10

[Service]
Type=simple
ExecStart={{.Bin}} run -f {{.File}} %i
Restart=on-failure
RestartSec={{.RestartSec}}
# SIGTERM goes to the supervisor only: it shuts the guest down, then its
# virtiofs daemons. Whatever is left after TimeoutStopSec is killed.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={{.StopSec}}
# A VMM killed by the memory limit (microvm@NAME.service.d/limits.conf) is
# the supervisor's to report; it then exits non-zero, and is restarted.
OOMPolicy=continue

[Install]
WantedBy={{.Target}}
`))

var targetTemplate = template.Must(template.New("target").Parse(`# Written by microvm apply; changes are overwritten.
[Unit]
Description=microVMs of {{.File}}
Wants={{.HostUnit}} network-online.target
After={{.HostUnit}} network-online.target

[Install]
WantedBy=multi-user.target
`))

// The host unit applies the host part of the file at boot (storage,
// bridges, TAPs, forwarding, the nftables table), after the network and
// any distribution firewall, whose reload would flush the table, and
// before any VM; then it keeps the firewall. It says it is ready
// (Type=notify) only once the host part is applied: until then it tries
// again every few seconds, saying why in systemctl status, and the VMs
// wait (TimeoutStartSec=infinity), so an uplink that comes late or a pool
// imported late delays the VMs instead of failing them. Stopping it
// leaves the host part as it is.
var hostTemplate = template.Must(template.New("host").Parse(`# Written by microvm apply; changes are overwritten.
[Unit]
Description=microVM host part of {{.File}}: storage, networks, firewall (kept)
Wants=network-online.target
After=network-online.target nftables.service firewalld.service zfs-mount.service zfs-fuse.service
Before={{.Target}}
StartLimitIntervalSec=0

[Service]
Type=notify
ExecStart={{.Bin}} host -f {{.File}}
Restart=always
RestartSec=2s
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`))

// Render returns the unit template, the target and the host unit for the
// microvm binary bin reading file, and the limits of each of vms as a
// drop-in of its unit (DropIn). Both paths must be absolute: systemd runs
// them at boot.
func Render(bin, file string, vms []config.VM) (Units, error) {
	for _, p := range []string{bin, file} {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("systemd units need absolute paths, not %q", p)
		}
		if strings.ContainsAny(p, " \t\n\"'\\%$") {
			return nil, fmt.Errorf("path %q has a character systemd would interpret; move it", p)
		}
	}
	data := map[string]any{
		"Bin": bin, "File": file, "Target": Target, "HostUnit": HostUnit,
		"RestartSec": fmt.Sprintf("%ds", int(RestartDelay/time.Second)),
		"StopSec":    fmt.Sprintf("%ds", int(StopTimeout/time.Second)),
	}
	u := Units{}
	for name, t := range map[string]*template.Template{Template: unitTemplate, Target: targetTemplate, HostUnit: hostTemplate} {
		var b bytes.Buffer
		if err := t.Execute(&b, data); err != nil {
			return nil, err
		}
		u[name] = b.Bytes()
	}
	for i := range vms {
		name, content := DropIn(&vms[i])
		u[name] = content
	}
	return u, nil
}

// DropIn is the drop-in of vm's unit that holds its limits, and its name
// relative to the unit directory: microvm@NAME.service.d/limits.conf. The
// unit's cgroup holds the supervisor, its virtiofs daemons and the VMM.
func DropIn(vm *config.VM) (name string, content []byte) {
	l := vm.Limits
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s changes are overwritten.\n", unitMark)
	fmt.Fprintf(&b, "# %s's limits, from infra.toml: memory %d MiB with what its processes take\n", vm.Name, vm.MemoryMiB)
	fmt.Fprintf(&b, "# beside it, CPU weight 100 per vCPU (%d), cpu_max", vm.VCPU)
	if l.CPUMax == 0 {
		b.WriteString(" none")
	}
	b.WriteString(", io_weight.\n[Service]\n")
	fmt.Fprintf(&b, "MemoryMax=%dM\nMemorySwapMax=0\nTasksMax=%d\nCPUWeight=%d\n", l.MemoryMiB, l.Pids, l.CPUWeight)
	if l.CPUMax > 0 {
		fmt.Fprintf(&b, "CPUQuota=%d%%\n", l.CPUMax)
	}
	fmt.Fprintf(&b, "IOWeight=%d\n", l.IOWeight)
	return Unit(vm.Name) + ".d/limits.conf", b.Bytes()
}

// Booted reports whether PID 1 is systemd (as sd_booted(3) tells it).
func Booted() bool {
	fi, err := os.Stat(bootedDir)
	return err == nil && fi.IsDir()
}

// unitMark begins every unit the program writes: a file of the same name
// without it is someone else's, and is never overwritten.
const unitMark = "# Written by microvm apply;"

// Ours reports whether a unit file's content is the program's.
func Ours(content []byte) bool { return bytes.HasPrefix(content, []byte(unitMark)) }

// Changed lists, sorted, the units whose file in dir is missing or
// differs. A file of that name the program did not write is an error.
func (u Units) Changed(dir string) ([]string, error) {
	var names []string
	for name, content := range u {
		p := filepath.Join(dir, name)
		old, err := os.ReadFile(p)
		switch {
		case err == nil && bytes.Equal(old, content):
			continue
		case err == nil && !bytes.HasPrefix(old, []byte(unitMark)):
			return nil, fmt.Errorf("%s exists and was not written by microvm (it does not begin with %q); the program does not replace it: rename or remove it", p, unitMark)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

// Install writes the units that changed into dir, and reports whether any
// did (then systemd must reload them).
func (u Units) Install(dir string) (changed bool, err error) {
	names, err := u.Changed(dir)
	if err != nil {
		return false, err
	}
	for _, name := range names {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			return changed, fmt.Errorf("installing %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), u[name], 0o644); err != nil {
			return changed, fmt.Errorf("installing %s: %w", name, err)
		}
		changed = true
	}
	return changed, nil
}

// Systemctl runs systemctl with args, returning its message on failure.
func Systemctl(args ...string) error {
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	return nil
}
