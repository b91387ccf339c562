// Package runner is what `microvm run NAME` does: supervise one VM in the
// foreground, as a systemd unit runs it. In order:
//
//  1. check the host part is applied and the image is built;
//  2. prepare the VM's files: the read-only view of the image, the VM's own
//     /etc and /var (seeded from the image on first start), the files the
//     program manages in them, and the initramfs;
//  3. start the three virtiofsd daemons and wait for their sockets;
//  4. start the VMM as the unprivileged VMM user;
//  5. probe the guest's sshd while it boots, and record when it answers;
//  6. wait: on SIGTERM or SIGINT stop the guest gracefully, wait for the VMM
//     to exit, and only then stop the daemons (a daemon that went first
//     would leave the guest with I/O errors on its root filesystem).
//
// If the VMM dies, Run stops the daemons and returns an error, so the
// supervisor exits non-zero and systemd restarts it.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/vmm/cloudhypervisor"
	"github.com/simple-microvm-infra/microvm/internal/vmm/qemu"
)

// Run supervises vm until stop is closed (then it shuts the guest down) or
// the VMM exits. Progress goes to log, one line per step.
func Run(in *config.Infra, vm *config.VM, stop <-chan struct{}, log io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(log, vm.Name+": "+format+"\n", args...) }

	if err := Preflight(in, vm); err != nil {
		return err
	}
	spec := vmm.NewSpec(in.Host, vm)
	if err := prepare(in, vm, spec, logf); err != nil {
		return err
	}

	daemon, err := virtiofs.Find()
	if err != nil {
		return err
	}
	var daemons []*virtiofs.Process
	stopDaemons := func() {
		for _, d := range daemons {
			d.Stop(5 * time.Second)
		}
	}
	for _, sh := range spec.Shares {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p, err := virtiofs.Start(ctx, daemon, sh, log)
		cancel()
		if err != nil {
			stopDaemons()
			return err
		}
		daemons = append(daemons, p)
	}
	logf("%s serves image, etc and var", daemon)

	spec.TAP, err = vmm.OpenTAP(vm.TAP, vm.TAPQueues())
	if err != nil {
		stopDaemons()
		return err
	}
	backend := backendFor(in, vm)
	cmd, err := backend.Command(spec)
	if err != nil {
		stopDaemons()
		return err
	}
	if err := runAs(cmd, in.Host.User); err != nil {
		stopDaemons()
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	m, err := vmm.Start(backend, vm, cmd)
	for _, f := range spec.TAP {
		f.Close() // the VMM has its own copies now
	}
	if err != nil {
		stopDaemons()
		return err
	}
	m.Logf = logf
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = m.Ready(ctx)
	cancel()
	if err != nil {
		m.Stop(context.Background())
		stopDaemons()
		return err
	}
	logf("%s started (pid %d), console in %s", vm.Hypervisor, m.Pid(), vm.ConsoleLog())
	if err := writeStarted(in, vm, m.Pid(), began); err != nil {
		logf("recording what the VM started with: %v", err)
	}
	defer os.Remove(vm.StartedFile())
	ready, stopReady := context.WithCancel(context.Background())
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		watchReady(ready, vm, m.Pid(), began, logf)
	}()
	defer func() { stopReady(); <-readyDone }() // before the record goes

	var vmmErr error
	select {
	case <-stop:
		logf("shutting the guest down")
		vmmErr = m.Stop(context.Background())
	case <-m.Done():
		vmmErr = m.Wait()
		if vmmErr == nil {
			logf("the guest powered off")
		} else {
			vmmErr = fmt.Errorf("the VMM exited: %w", vmmErr)
		}
	case <-anyDone(daemons):
		logf("a virtiofs daemon exited; stopping the VMM")
		m.Stop(context.Background())
		vmmErr = errors.New("a virtiofs daemon exited under a running guest")
	}
	stopDaemons()
	logf("stopped")
	return vmmErr
}

// checkHost refuses to start a VM whose network the host does not have.
func checkHost(in *config.Infra, vm *config.VM) error {
	p, err := plan.Host(in)
	if err != nil {
		return err
	}
	if len(p.Actions) > 0 {
		return fmt.Errorf("the host part is not applied (plan shows %d changes, e.g. %q); run: microvm apply --host-only -f %s", len(p.Actions), p.Actions[0].String(), in.File)
	}
	for _, f := range []string{in.Host.ImageRootfs(vm.Image), in.Host.ImageVmlinux(vm.Image)} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("image %s is not built (%s is missing); run: microvm image build %s", vm.Image, f, vm.Image)
		}
	}
	return nil
}

// prepare makes the files the VM boots from and writes its managed files.
func prepare(in *config.Infra, vm *config.VM, spec vmm.Spec, logf func(string, ...any)) error {
	h := in.Host
	uid, gid, err := ids(h.User)
	if err != nil {
		return err
	}
	// The VMM, running as the VMM user, creates its control socket and
	// console log in the VM's run directory; it must be able to reach it.
	if err := os.MkdirAll(h.RunDir, 0o755); err != nil {
		return fmt.Errorf("making %s: %w", h.RunDir, err)
	}
	if err := os.MkdirAll(vm.RunDir, 0o750); err != nil {
		return fmt.Errorf("making %s: %w", vm.RunDir, err)
	}
	if err := os.Chown(vm.RunDir, uid, gid); err != nil {
		return fmt.Errorf("making %s: %w", vm.RunDir, err)
	}
	view := &virtiofs.ReadOnlyView{Src: h.ImageRootfs(vm.Image), Dst: h.ImageView(vm.Image)}
	if err := view.Apply(); err != nil {
		return err
	}
	if err := guest.Seed(vm, h.ImageRootfs(vm.Image)); err != nil {
		return err
	}
	pub, _, err := guest.AdminKey(h)
	if err != nil {
		return err
	}
	if err := guest.WriteManaged(vm, guest.Keys{Admin: pub, Users: vm.SSHKeys}); err != nil {
		return err
	}
	init, err := kernel.FindInit()
	if err != nil {
		return err
	}
	if wrote, err := kernel.UpdateInitramfs(h.ImageRootfs(vm.Image), init, spec.Initramfs); err != nil {
		return err
	} else if wrote {
		logf("initramfs of image %s made with %s", vm.Image, init)
	}
	return nil
}

func backendFor(in *config.Infra, vm *config.VM) vmm.Backend {
	if vm.Hypervisor == "qemu" {
		return qemu.New(in.Host.Accel)
	}
	return cloudhypervisor.New()
}

// runAs makes cmd run as user, with that user's groups: the VMM needs no
// privilege beyond its TAP (which the user owns) and the daemons' sockets
// (which its group may use).
func runAs(c *exec.Cmd, name string) error {
	uid, gid, err := ids(name)
	if err != nil {
		return err
	}
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups(name)}
	return nil
}

func ids(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("looking up the VMM user: %w (microvm apply --host-only creates it)", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// groups returns the supplementary groups of user name, such as kvm.
func groups(name string) []uint32 {
	u, err := user.Lookup(name)
	if err != nil {
		return nil
	}
	ids, _ := u.GroupIds()
	var out []uint32
	for _, id := range ids {
		if n, err := strconv.Atoi(id); err == nil {
			out = append(out, uint32(n))
		}
	}
	return out
}

// anyDone is closed when any of the daemons exits.
func anyDone(ps []*virtiofs.Process) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	for _, p := range ps {
		go func() {
			<-p.Done()
			once.Do(func() { close(ch) })
		}()
	}
	return ch
}
