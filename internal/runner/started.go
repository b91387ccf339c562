package runner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/secret"
)

// Started is what a running VM was started with, kept in vm.StartedFile()
// while it runs: apply compares it with the file to restart exactly the VMs
// whose effective settings, image or kernel changed.
type Started struct {
	Settings map[string]string `json:"settings"`
	Hash     string            `json:"hash"`
	Time     time.Time         `json:"started"`
	VMMPid   int               `json:"vmm_pid"`
	VMMStart uint64            `json:"vmm_start"` // its start time (package proc)
	RunPid   int               `json:"run_pid"`   // the `microvm run` supervisor
	RunStart uint64            `json:"run_start"`
	// Ready is when the guest's sshd first answered (see watchReady);
	// nil while it boots.
	Ready *time.Time `json:"ready,omitempty"`
}

// Guest says how the guest of a running VM is: "ready" once its sshd has
// answered, "booting" until then.
func (st Started) Guest() string {
	if st.Ready != nil {
		return "ready"
	}
	return "booting"
}

// VMM is the VMM's process, as recorded.
func (st Started) VMM() proc.ID { return proc.ID{Pid: st.VMMPid, Start: st.VMMStart} }

// Run is the supervisor's process, as recorded.
func (st Started) Run() proc.ID { return proc.ID{Pid: st.RunPid, Start: st.RunStart} }

// Settings are the effective settings a VM runs with: everything in the
// model that reaches its VMM or its guest, and the identity of the image's
// root filesystem and kernel (a rebuilt image is a new directory and file).
func Settings(in *config.Infra, vm *config.VM) map[string]string {
	// The image's directory: for a declared image, its current version
	// (a new one when its definition or its base changed), which a
	// running VM is restarted onto.
	dir := vm.Image + " (not built yet)"
	if r, err := image.Resolve(in, vm.Image); err == nil && r.Dir != "" {
		dir = r.Dir
	}
	root := in.Host.ImageRootfs(dir)
	if _, err := os.Stat(root); err != nil {
		root = in.Host.ImageLayer(dir)
	}
	s := map[string]string{
		"subnet":     vm.Subnet.String(),
		"mac":        vm.MAC.String(),
		"vcpu":       fmt.Sprint(vm.VCPU),
		"memory":     fmt.Sprint(vm.MemoryMiB),
		"hypervisor": string(vm.Hypervisor),
		"image":      vm.Image,
		"dns":        vm.DNS,
		"ssh_keys":   strings.Join(vm.SSHKeys, "\n"),
		"accel":      string(in.Host.Accel),
		"user":       vm.User,
		"image_dir":  dir,
		"image_root": fileID(root),
		"kernel":     fileID(in.Host.ImageVmlinux(dir)),
	}
	if img, ok := in.Image(vm.Image); ok {
		s["image_summary"] = img.Summary()
	}
	if vm.ImageWritable {
		s["image_writable"] = "true"
	}
	// The guest's init sets its IPv6 address, and asks its gateway for
	// names when it has an egress list (whose names the host's resolver
	// serves: they change under a running VM).
	if vm.HasIPv6() {
		s["subnet6"] = vm.Subnet6.String()
	}
	if vm.HasEgress() {
		s["nameserver"] = vm.Nameserver() + " (egress)"
	}
	// Limits its cgroup is made with at the start (the memory limit
	// follows memory). Written only when not the default, so that VMs
	// started before these keys existed do not count as changed. The
	// disk's limit is the storage's, changed in place by apply.
	if vm.Limits.CPUMax > 0 {
		s["cpu_max"] = fmt.Sprintf("%d%%", vm.Limits.CPUMax)
	}
	if vm.Limits.IOWeight != config.DefaultIOWeight {
		s["io_weight"] = fmt.Sprint(vm.Limits.IOWeight)
	}
	// What runs in it: each declared file by its content, mode and owner,
	// the units, the run_once list.
	for _, f := range vm.Files {
		s["file "+f.Path] = fmt.Sprintf("%s %s %s:%s", f.Sum, f.Mode, f.Owner, f.Group)
	}
	if len(vm.Services) > 0 {
		s["services"] = strings.Join(vm.Services, " ")
	}
	if len(vm.DisableServices) > 0 {
		s["disable_services"] = strings.Join(vm.DisableServices, " ")
	}
	if len(vm.RunOnce) > 0 {
		s["run_once"] = guest.RunOnceHash(vm.RunOnce)
	}
	for _, v := range vm.Volumes {
		s["volume "+v.Name] = fmt.Sprintf("%d bytes at %s, %s", v.Size, v.Mount, v.FS)
	}
	// A secret by its source, never its value.
	for name, d := range secret.Digest(vm) {
		s["secret "+name] = d
	}
	return s
}

// fileID names one version of a file or directory: its inode, size and
// modification time.
func fileID(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("inode %d, %d bytes, %s", ino, fi.Size(), fi.ModTime().UTC().Format(time.RFC3339Nano))
}

// Hash is a short digest of settings.
func Hash(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%q\n", k, settings[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Changed lists what differs between the settings a VM was started with
// and the ones it would start with now, for a person: "memory 512 -> 1024".
func Changed(was, now map[string]string) []string {
	if _, ok := was["image_dir"]; !ok && was["image"] != "" {
		// Recorded before images had versions: the directory was the name.
		was = maps.Clone(was)
		was["image_dir"] = was["image"]
	}
	keys := map[string]bool{}
	for k := range was {
		keys[k] = true
	}
	for k := range now {
		keys[k] = true
	}
	var out, files, secrets []string
	newImage := was["image_dir"] != now["image_dir"]
	for k := range keys {
		a, b := was[k], now[k]
		if a == b {
			continue
		}
		switch {
		case strings.HasPrefix(k, "file "):
			files = append(files, strings.TrimPrefix(k, "file "))
			continue
		case strings.HasPrefix(k, "secret "):
			secrets = append(secrets, strings.TrimPrefix(k, "secret "))
			continue
		case k == "run_once":
			out = append(out, "run_once changed")
			continue
		}
		switch k {
		case "image_dir":
			switch sa, sb := was["image_summary"], now["image_summary"]; {
			case sa != "" && sb != "" && sa != sb:
				out = append(out, fmt.Sprintf("image %s: %s -> %s", now["image"], sa, sb))
			case was["image"] == now["image"]:
				out = append(out, fmt.Sprintf("image %s rebuilt (%s -> %s)", now["image"], orNone(a), b))
			}
		case "image_summary", "image_root", "kernel":
			if newImage {
				continue // said by image_dir
			}
			if k == "kernel" {
				out = append(out, "kernel changed")
			} else if k == "image_root" {
				out = append(out, "image rebuilt")
			}
		case "image_writable":
			out = append(out, fmt.Sprintf("image_writable %s -> %s", orFalse(a), orFalse(b)))
		case "ssh_keys":
			out = append(out, "ssh_keys changed")
		case "io_weight":
			out = append(out, fmt.Sprintf("io_weight %s -> %s", or(a, fmt.Sprint(config.DefaultIOWeight)), or(b, fmt.Sprint(config.DefaultIOWeight))))
		case "cpu_max":
			out = append(out, fmt.Sprintf("cpu_max %s -> %s", or(a, "none"), or(b, "none")))
		default:
			out = append(out, fmt.Sprintf("%s %s -> %s", k, orNone(a), orNone(b)))
		}
	}
	if len(files) > 0 {
		sort.Strings(files)
		more := ""
		if len(files) > 3 {
			files, more = files[:3], fmt.Sprintf(" and %d more", len(files)-3)
		}
		out = append(out, "files changed: "+strings.Join(files, ", ")+more)
	}
	if len(secrets) > 0 {
		sort.Strings(secrets)
		out = append(out, "secrets changed: "+strings.Join(secrets, ", "))
	}
	sort.Strings(out)
	return out
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orFalse(s string) string {
	if s == "" {
		return "false"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// ReadStarted reads what vm was started with; ok is false if the file is
// missing (the VM is not running, or was started by an older version). It
// is read only from a run directory that root alone can write.
func ReadStarted(vm *config.VM) (st Started, ok bool, err error) {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	defer d.Close()
	b, err := d.ReadFile(filepath.Base(vm.StartedFile()))
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("reading %s: %w", vm.StartedFile(), err)
	}
	return st, true, nil
}

// writeStarted records in run (vm's run directory) that the VMM vmm runs,
// since began.
func writeStarted(run *safedir.Dir, in *config.Infra, vm *config.VM, vmm proc.ID, began time.Time) error {
	s := Settings(in, vm)
	self := proc.Self()
	return writeStartedFile(run, vm, Started{Settings: s, Hash: Hash(s), Time: began.UTC(),
		VMMPid: vmm.Pid, VMMStart: vmm.Start, RunPid: self.Pid, RunStart: self.Start})
}

// writeStartedFile replaces vm's started record in run with st, at once.
func writeStartedFile(run *safedir.Dir, vm *config.VM, st Started) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return run.WriteFile(filepath.Base(vm.StartedFile()), append(b, '\n'), 0o644)
}

// Preflight checks what a VM needs before anything is started, so that
// `microvm up` (and run) fails with one clear message and changes nothing:
// the Checks, then the host part applied.
func Preflight(in *config.Infra, vm *config.VM) error {
	if errs := Checks(in, vm); len(errs) > 0 {
		return errs[0]
	}
	if _, err := bootImage(in, vm); err != nil {
		return err
	}
	return checkHost(in, vm)
}
