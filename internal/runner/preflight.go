package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/secret"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Checks are what a VM needs from the host to start, beyond the host part
// that apply makes: the VMM's program, /dev/kvm where it is needed, the
// image built, the guest's init (microvm-init) beside microvm, and
// state_dir and run_dir reachable by the user the VMM runs as. `microvm
// plan` reports every one of them, for every VM it would start, before
// anything changes; up, restart and a supervisor stop at the first. Each
// message starts with the VM's name.
func Checks(in *config.Infra, vm *config.VM) []error {
	var errs []error
	for _, check := range []func(*config.Infra, *config.VM) error{vmmInstalled, kvmPresent, imageBuilt, initFound, vmmReaches} {
		if err := check(in, vm); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, unitsPresent(in, vm)...)
	return append(errs, secret.Check(vm)...)
}

// KVMDevice is where KVM is; tests point it elsewhere.
var KVMDevice = "/dev/kvm"

func vmmInstalled(in *config.Infra, vm *config.VM) error {
	h, err := vmm.For(in, vm)
	if err != nil {
		return err
	}
	if _, err := exec.LookPath(h.Program); err != nil {
		return fmt.Errorf("%s uses hypervisor %q, but %s is not installed (not found in PATH); install it, or set hypervisor = %q for it in %s", vm.Name, vm.Hypervisor, h.Program, other(h.Name), in.File)
	}
	return nil
}

// other is the first hypervisor but h, to suggest instead.
func other(h config.Hypervisor) config.Hypervisor {
	for _, n := range vmm.Names() {
		if n != h {
			return n
		}
	}
	return h
}

func kvmPresent(in *config.Infra, vm *config.VM) error {
	h, _ := vmm.Lookup(vm.Hypervisor) // unknown: vmmInstalled says so
	if h.NeedsKVM || in.Host.Accel == config.KVM {
		if _, err := os.Stat(KVMDevice); err != nil {
			return fmt.Errorf("%s needs /dev/kvm, which this host does not have (enable virtualization, load kvm_intel or kvm_amd); without KVM only QEMU can run guests: set accel = \"tcg\" in [host] and hypervisor = \"qemu\"", vm.Name)
		}
	}
	return nil
}

// imageBuilt checks that the VM's image is built, or, for a declared image,
// that apply can build it: that what it is made from, down its chain, is
// a recipe or an image on the host. (Preflight, for the commands that
// build nothing, wants it built.)
func imageBuilt(in *config.Infra, vm *config.VM) error {
	chain := in.Chain(vm.Image)
	if len(chain) == 0 {
		_, err := bootImage(in, vm)
		return err
	}
	base := chain[len(chain)-1].From
	if slices.Contains(config.Recipes, base) {
		return nil
	}
	if _, err := os.Stat(in.Host.ImageVmlinux(base)); err != nil {
		return fmt.Errorf("%s: image %s is made from %s, which is not on this host and has no recipe; import it (microvm image import %s ROOTFS.tar) or make %s from a recipe (%s)", vm.Name, vm.Image, base, base, chain[len(chain)-1].Name, strings.Join(config.Recipes, ", "))
	}
	return nil
}

func initFound(in *config.Infra, vm *config.VM) error {
	if _, err := kernel.FindInit(); err != nil {
		return fmt.Errorf("%s: %w", vm.Name, err)
	}
	return nil
}

// vmmReaches checks that the VMM, which runs as the VM's user, can open
// the kernel it boots (in state_dir) and reach run_dir, where its sockets,
// console log and initramfs are (the VM's own directory in it is made
// the user's by the supervisor), so that a state_dir under a private
// directory is an error here instead of a VMM that fails at every restart.
func vmmReaches(in *config.Infra, vm *config.VM) error {
	u := lookupIDs(vm.User)
	kernel := in.Host.ImageVmlinux(vm.Image)
	if r, err := image.Resolve(in, vm.Image); err == nil && r.Decl != nil {
		kernel = in.Host.ImagesDir() // where the kernel of a version apply has yet to build will be
		if r.Built(in.Host) {
			kernel = in.Host.ImageVmlinux(r.Dir)
		}
	}
	for _, p := range []string{kernel, in.Host.RunDir} {
		if err := u.reaches(p); err != nil {
			return fmt.Errorf("%s: the VMM runs as user %s, which cannot reach %s: %w; make it reachable (chmod o+x on the directory) or move state_dir or run_dir in %s", vm.Name, vm.User, p, err, in.File)
		}
	}
	return nil
}

// access is a user as the kernel checks file access: uid, groups.
type access struct {
	uid    int
	groups map[int]bool
}

// lookupIDs returns the user's ids; a user that does not exist yet (apply
// creates it) has none, and gets only what every user gets.
func lookupIDs(name string) access {
	acc := access{uid: -1, groups: map[int]bool{}}
	id, err := hostnet.LookupIDs(name)
	if err != nil {
		return acc
	}
	acc.uid = int(id.UID)
	for _, g := range append(id.Groups, id.GID) {
		acc.groups[int(g)] = true
	}
	return acc
}

// reaches checks search permission on every directory above path that
// exists, and read permission on path if it exists, by the mode bits
// (ACLs are not read). What does not exist yet is made reachable by the
// supervisor.
func (id access) reaches(path string) error {
	var dirs []string
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		dirs = append([]string{d}, dirs...)
		if d == "/" {
			break
		}
	}
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !id.may(fi, 1) {
			return fmt.Errorf("%s is mode %04o, owned by uid %d", d, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	want := os.FileMode(4)
	if fi.IsDir() {
		want = 1
	}
	if !id.may(fi, want) {
		return fmt.Errorf("it is mode %04o, owned by uid %d", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid)
	}
	return nil
}

// may reports whether id has the access bits want (4 read, 1 search) on fi.
func (id access) may(fi os.FileInfo, want os.FileMode) bool {
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case id.uid >= 0 && int(st.Uid) == id.uid:
		return perm>>6&want == want
	case id.groups[int(st.Gid)]:
		return perm>>3&want == want
	}
	return perm&want == want
}

// unitsPresent checks that the units of services and disable_services are
// in the VM's image, once it is built (apply builds a declared one first,
// and the start checks again).
func unitsPresent(in *config.Infra, vm *config.VM) []error {
	r, err := image.Resolve(in, vm.Image)
	if err != nil || !r.Built(in.Host) {
		return nil
	}
	layers, err := image.Lowers(in.Host, r.Dir)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", vm.Name, err)}
	}
	return guest.UnitsMissing(vm, layers)
}
