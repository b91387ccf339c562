// Package runner is what `microvm run NAME` does: supervise one VM in the
// foreground, as a systemd unit runs it. In order:
//
//  1. check the host part is applied and the image is built;
//  2. prepare the VM's files: the read-only view of the image, the VM's own
//     /etc and /var (seeded from the image on first start), the files the
//     program manages in them, and the initramfs;
//  3. start the three virtiofsd daemons and wait for their sockets;
//  4. start the VMM in its jail (package jail: a root of its own with only
//     what it needs, its own PID and network namespaces) as the VM's own
//     unprivileged user (USER-NAME), with no_new_privs, given only its
//     TAP's descriptors;
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
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/secret"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
	"github.com/simple-microvm-infra/microvm/internal/volume"
)

// Run supervises vm until stop is closed (then it shuts the guest down) or
// the VMM exits. Progress goes to log, one line per step.
func Run(in *config.Infra, vm *config.VM, stop <-chan struct{}, log io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(log, vm.Name+": "+format+"\n", args...) }

	run, err := supervise.OpenRunDir(vm)
	if err != nil {
		return err
	}
	defer run.Close()
	unlock, err := lockRun(run, vm)
	if err != nil {
		return err
	}
	defer unlock()
	if err := Preflight(in, vm); err != nil {
		return err
	}
	for _, w := range hostWarnings(in, vm) {
		logf("warning: %s", w)
	}
	img, err := bootImage(in, vm)
	if err != nil {
		return err
	}
	// Every secret, or the VM does not start: never with half of them.
	secrets, err := secret.All(vm)
	if err != nil {
		return err
	}
	spec := vmm.NewSpec(in.Host, vm, img.Dir)
	defer func() {
		if err := releaseImage(in.Host, vm, run, img.Dir); err != nil {
			logf("releasing image %s: %v", img.Dir, err)
		}
	}()
	unmount, err := prepare(in, vm, run, spec, img, logf)
	if err != nil {
		return err
	}
	defer unmount()
	if len(vm.Secrets) > 0 {
		defer func() {
			if err := secret.Remove(vm); err != nil {
				logf("%v", err)
			}
		}()
		if err := deliverSecrets(vm, secrets); err != nil {
			return err
		}
		logf("%d secrets in %s (a tmpfs), served read-only", len(secrets), vm.SecretsDir())
	}

	oom := watchOOM(vm, logf)
	daemon, err := virtiofs.Find()
	if err != nil {
		return err
	}
	var daemons []*virtiofs.Process
	stopDaemons := func() {
		for _, d := range daemons {
			if err := d.Stop(5 * time.Second); err != nil {
				logf("%v", err)
			}
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
	logf("%s serves %s", daemon, shareTags(spec.Shares))

	spec.TAP, err = vmm.OpenTAP(vm.TAP, vm.TAPQueues())
	if err != nil {
		stopDaemons()
		return err
	}
	console, consoleDone, err := openConsole(run, vm)
	if err != nil {
		for _, f := range spec.TAP {
			f.Close()
		}
		stopDaemons()
		return err
	}
	spec.Console = console
	defer func() { console.Close(); <-consoleDone }() // the VMM has gone: all it wrote is in the log
	if spec.Volumes, err = openVolumes(vm, logf); err != nil {
		for _, f := range spec.TAP {
			f.Close()
		}
		stopDaemons()
		return err
	}
	backend, err := backendFor(in, vm)
	var cmd *exec.Cmd
	if err == nil {
		cmd, err = backend.Command(spec)
	}
	if err != nil {
		stopDaemons()
		return err
	}
	if err := confine(cmd, spec, in.Host.Accel, vm.User); err != nil {
		stopDaemons()
		return err
	}
	// Through a pipe: given log itself (supervisor.log, root's), the VMM's
	// user could truncate or rewrite it.
	cmd.Stdout, cmd.Stderr = struct{ io.Writer }{log}, struct{ io.Writer }{log}
	m, err := vmm.Start(backend, vm, cmd)
	for _, f := range spec.TAP {
		f.Close() // the VMM has its own copies now
	}
	console.Close() // the VMM's is the console's one writer now
	for _, v := range spec.Volumes {
		v.File.Close()
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
		_ = m.Stop(context.Background()) // err, why it never got ready, is the one to report
		stopDaemons()
		return err
	}
	logf("%s started (pid %d, user %s), console in %s", vm.Hypervisor, m.Pid(), vm.User, vm.ConsoleLog())
	// Over the cgroup's memory limit, the kernel kills the VMM, which holds
	// the guest's memory, rather than a virtiofs daemon that maps the same
	// pages and so looks as large: the log then names what took it.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", m.Pid()), []byte("500"), 0); err != nil {
		logf("warning: the VMM is not the first the kernel kills for memory: %v", err)
	}
	vmmID, err := proc.Of(m.Pid())
	if err == nil {
		err = writeStarted(run, in, vm, vmmID, began)
	}
	if err != nil {
		logf("recording what the VM started with: %v", err)
	}
	if err := bootStarted(run, vm, began); err != nil {
		logf("counting the boot: %v", err)
	}
	defer run.Remove(filepath.Base(vm.StartedFile()))
	ready, stopReady := context.WithCancel(context.Background())
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		watchReady(ready, run, vm, vmmID, began, logf)
	}()
	defer func() { stopReady(); <-readyDone }() // before the record goes

	var vmmErr error
	stopped := func() {
		if err := bootStopped(run, vm); err != nil {
			logf("recording the stop: %v", err)
		}
	}
	select {
	case <-stop:
		defer stopped()
		logf("shutting the guest down")
		began := time.Now()
		vmmErr = m.Stop(context.Background())
		took := time.Since(began).Round(100 * time.Millisecond)
		if m.Graceful {
			logf("the guest shut down in %s; stopping its virtiofs daemons", took)
		} else {
			logf("the guest did not shut down by itself; its VMM stopped after %s; stopping its virtiofs daemons", took)
		}
	case <-m.Done():
		vmmErr = m.Wait()
		if vmmErr == nil {
			defer stopped()
			logf("the guest powered off")
		} else if why, ok := oom.killed(); ok {
			vmmErr = fmt.Errorf("the VMM was %s (its exit: %w)", why, vmmErr)
		} else {
			vmmErr = fmt.Errorf("the VMM exited: %w", vmmErr)
		}
	case <-anyDone(daemons):
		logf("a virtiofs daemon exited; stopping the VMM")
		_ = m.Stop(context.Background()) // the daemon's exit is the error to report
		vmmErr = errors.New("a virtiofs daemon exited under a running guest")
		if why, ok := oom.killed(); ok {
			vmmErr = fmt.Errorf("a virtiofs daemon was %s", why)
		}
	}
	stopDaemons()
	logf("stopped")
	return vmmErr
}

// prepare makes the files the VM boots from and writes its managed files.
// What it returns undoes the mount of the VM's state where it does not
// stay (protectState), for when the VM has stopped.
func prepare(in *config.Infra, vm *config.VM, run *safedir.Dir, spec vmm.Spec, img *image.Ref, logf func(string, ...any)) (unmount func(), err error) {
	unmount = func() {}
	state, err := guest.OpenState(vm)
	if err != nil {
		return unmount, err
	}
	state.Close()
	// Before anything is written in it: with plain directories, the
	// project quota that bounds what the VM keeps.
	if msg, err := storage.BoundDisk(in.Host, vm); err != nil {
		return unmount, err
	} else if msg != "" {
		logf("%s", msg)
	}
	if unmount, err = protectState(in.Host, vm); err != nil {
		return unmount, err
	}
	defer func() {
		if err != nil {
			unmount()
		}
	}()
	return unmount, prepareFiles(in, vm, run, spec, img, logf)
}

func prepareFiles(in *config.Infra, vm *config.VM, run *safedir.Dir, spec vmm.Spec, img *image.Ref, logf func(string, ...any)) error {
	h := in.Host
	id, err := ids(vm.User)
	if err != nil {
		return err
	}
	uid, gid := int(id.UID), int(id.GID)
	// The VMM creates its control socket and console log in a directory of
	// its own, made anew at each start: nothing a VMM left there before
	// is used again.
	vmmDir := filepath.Base(vm.VMMDir())
	if err := run.RemoveAll(vmmDir); err != nil {
		return err
	}
	d, err := run.MakeDir(vmmDir, config.VMMDirMode, uid, gid)
	if err != nil {
		return fmt.Errorf("making %s: %w", vm.VMMDir(), err)
	}
	d.Close()
	// The VMM's jail is built on this empty directory of root's.
	if d, err = run.MakeDir(filepath.Base(vm.JailDir()), 0o700, 0, 0); err != nil {
		return fmt.Errorf("making %s: %w", vm.JailDir(), err)
	}
	d.Close()
	// The image as the guests see it: its read-only view.
	if err := useImage(h, vm, run, img.Dir); err != nil {
		return err
	}
	root := h.ImageView(img.Dir)
	if err := guest.Seed(vm, root); err != nil {
		return err
	}
	kept, err := guest.Merge(vm, root, img.Dir)
	if err != nil {
		return fmt.Errorf("merging image %s into %s's /etc and /var: %w", img.Dir, vm.Name, err)
	}
	if len(kept) > 0 {
		more := ""
		if len(kept) > 10 {
			kept, more = kept[:10], fmt.Sprintf(" and %d more", len(kept)-10)
		}
		logf("image %s merged; kept the VM's own version of %s%s (microvm info %s lists what differs)", img.Dir, strings.Join(kept, ", "), more, vm.Name)
	}
	pub, _, err := guest.AdminKey(h)
	if err != nil {
		return err
	}
	if err := guest.WriteManaged(vm, guest.Keys{Admin: pub, Users: vm.SSHKeys}); err != nil {
		return err
	}
	if err := guest.WriteDeclared(vm, root); err != nil {
		return err
	}
	init, err := kernel.FindInit()
	if err != nil {
		return err
	}
	if wrote, err := kernel.UpdateInitramfs(root, init, spec.Initramfs); err != nil {
		return err
	} else if wrote {
		logf("initramfs of image %s made with %s", img.Dir, init)
	}
	return nil
}

// lockRun takes vm's run lock, held until unlock: a second `microvm run
// NAME` is refused before it remakes the first's VMM directory.
func lockRun(run *safedir.Dir, vm *config.VM) (unlock func(), err error) {
	f, err := run.Lock(filepath.Base(vm.RunLock()), false)
	if errors.Is(err, safedir.ErrLocked) {
		return nil, fmt.Errorf("%s is already running: another microvm run supervises it (microvm status %s)", vm.Name, vm.Name)
	}
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// confine makes cmd, the VMM's command, run in its jail (vmm.Spec.Jail,
// package jail) as user, with that user's groups: the VMM needs no
// privilege beyond its TAP (which the user owns, and whose descriptors it
// is given), the daemons' sockets (which its group may use) and, with KVM,
// /dev/kvm (group kvm).
func confine(cmd *exec.Cmd, spec vmm.Spec, accel config.Accel, user string) error {
	id, err := ids(user)
	if err != nil {
		return err
	}
	j := spec.Jail(cmd.Path, accel)
	j.UID, j.GID, j.Groups = id.UID, id.GID, id.Groups
	if err := j.Wrap(cmd); err != nil {
		return fmt.Errorf("jailing the VMM of %s: %w", spec.VM.Name, err)
	}
	return nil
}

// ids returns the ids of the VM's user name.
func ids(name string) (hostnet.IDs, error) {
	id, err := hostnet.LookupIDs(name)
	if err != nil {
		return id, fmt.Errorf("%w (microvm apply --host-only creates it)", err)
	}
	return id, nil
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

// deliverSecrets gives the secrets their owners in the guest (from its
// own /etc/passwd and /etc/group) and writes them into their tmpfs.
func deliverSecrets(vm *config.VM, values map[string][]byte) error {
	owned := map[string]secret.Owned{}
	for _, s := range vm.Secrets {
		uid, gid, err := guest.Owner(vm, s.Owner, s.Group)
		if err != nil {
			return fmt.Errorf("%s: secret %s: %w", s.At, s.Name, err)
		}
		owned[s.Name] = secret.Owned{Value: values[s.Name], Mode: s.Mode, UID: uid, GID: gid}
	}
	return secret.Deliver(vm, owned)
}

// openVolumes makes, grows and opens vm's volumes for its VMM, owned by
// the VM's user.
func openVolumes(vm *config.VM, logf func(string, ...any)) ([]vmm.Volume, error) {
	id, err := ids(vm.User)
	if err != nil {
		return nil, err
	}
	owner := func(user, group string) (int, int, error) { return guest.Owner(vm, user, group) }
	open, err := volume.Prepare(vm, int(id.UID), int(id.GID), owner, logf)
	if err != nil {
		return nil, err
	}
	out := make([]vmm.Volume, len(open))
	for i, o := range open {
		out[i] = vmm.Volume{Name: o.Name, File: o.File}
	}
	return out, nil
}

// shareTags lists the shares' tags for the log: "image, etc, var".
func shareTags(shares []virtiofs.Share) string {
	tags := make([]string, len(shares))
	for i, sh := range shares {
		tags[i] = sh.Tag
	}
	return strings.Join(tags, ", ")
}
