package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

func moveCmd() *command {
	var ef etcdFlags
	var to string
	var wait time.Duration
	return &command{
		name:   "move",
		args:   "VM --to HOST",
		short:  "move a VM of the fleet to another host, with its data",
		noFile: true,
		long: `
Moves VM, its /etc, /var and volumes, to HOST (docs/fleet.md, "Moving a
VM"): records the move in etcd; sends the VM's dataset while it runs
(zfs send, incremental from the last move's snapshot both hosts have),
through this command from ssh root@SOURCE microvm fleet send to ssh
root@TARGET microvm fleet receive (the hosts hold no key to each other);
stops the VM and sends what changed meanwhile; hands it over in etcd in
one transaction; then the source's daemon withdraws its network and
Tailscale route and the target's brings them up and starts it. Prints the
downtime: from the stop until the target says it runs.

The target must have the VM's image: each host makes its own images
(microvm image build; apply, for an [image.NAME] of the file), they are
not sent. The move refuses, changing nothing, while the target lacks it.

A failure before the handover starts the VM again on its source, where it
stays; after it, the target owns the VM, and running the same move again
waits for it there. The source keeps its copy of the data (microvm destroy
removes it). Needs storage = "zfs" on both hosts, the admin's certificate,
and ssh as root to both hosts ($MICROVM_FLEET_SSH is the ssh command, by
default "ssh -o BatchMode=yes"); microvm is at the same path on every host.

Examples:
  microvm move web --to hv2`,
		flags: func(fs *pflag.FlagSet) {
			ef.register(fs, adminCertName)
			fs.StringVar(&to, "to", "", "the host to move the VM to")
			fs.DurationVar(&wait, "wait", 10*time.Minute, "how long to wait for the VM to run on its new host")
		},
		run: func(e *env, args []string) error {
			if len(args) != 1 || to == "" {
				return fmt.Errorf("%w: name one VM and its new host, e.g. microvm move web --to hv2", errUsage)
			}
			cli, err := ef.connect()
			if err != nil {
				return err
			}
			defer cli.Close()
			return move(e, cli, args[0], to, wait)
		},
	}
}

func move(e *env, cli *clientv3.Client, vm, to string, wait time.Duration) error {
	ctx := context.Background()
	st, m, err := fleet.BeginMove(ctx, cli, vm, to)
	if errors.Is(err, fleet.ErrMoved) {
		fmt.Fprintf(e.stdout, "%s is placed on %s; waiting for it to run there\n", vm, to)
		_, err := waitRunning(ctx, cli, vm, to, wait)
		return err
	}
	if err != nil {
		return err
	}
	in, err := st.Model()
	if err != nil {
		return err
	}
	src, _ := in.FleetHost(m.From)
	dst, _ := in.FleetHost(m.To)
	ssh := sshCommand()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	output := func(h *config.FleetHost, args ...string) ([]byte, error) {
		return fleet.Remote(ctx, ssh, "root@"+h.Address, self, args...)
	}
	remote := func(h *config.FleetHost, args ...string) error {
		_, err := output(h, args...)
		return err
	}
	relay := func(snap, base string) error {
		n, err := fleet.Relay(ctx, ssh, "root@"+src.Address, "root@"+dst.Address, self, vm, snap, base)
		if err == nil {
			fmt.Fprintf(e.stdout, "sent %s@%s (%.1f MiB) to %s\n", vm, snap, float64(n)/(1<<20), m.To)
		}
		return err
	}
	stopped := false
	fail := func(err error) error {
		if stopped {
			if uerr := remote(src, "up", vm); uerr != nil {
				return fmt.Errorf("%w; starting %s again on %s failed too: %v", err, vm, m.From, uerr)
			}
		}
		if derr := fleet.EndMove(ctx, cli, vm); derr != nil {
			return fmt.Errorf("%w; forgetting the move failed: %v", err, derr)
		}
		return fmt.Errorf("%w\n%s runs on %s as before; fix the cause and run the move again", err, vm, m.From)
	}

	// 0. The target must have the VM's image: it is made by each host
	// (image build, or apply for a declared one), not sent.
	v, _ := in.VM(vm)
	out, err := output(dst, "image", "list", "--json")
	if err != nil {
		return fail(err)
	}
	var imgs imagesDoc
	if err := json.Unmarshal(out, &imgs); err != nil {
		return fail(fmt.Errorf("reading %s's images: %w", m.To, err))
	}
	if !slices.ContainsFunc(imgs.Images, func(i imageDoc) bool { return i.Name == v.Image || strings.HasPrefix(i.Name, v.Image+".") }) {
		return fail(fmt.Errorf("%s has no image %s, which %s boots; make it there first (on %s: microvm image build %s), then move again", m.To, v.Image, vm, m.To, v.Image))
	}

	// 1. While it runs: everything since the newest snapshot both have.
	a, err := fleet.RemoteSnapshots(ctx, ssh, "root@"+src.Address, self, vm)
	if err != nil {
		return fail(err)
	}
	b, err := fleet.RemoteSnapshots(ctx, ssh, "root@"+dst.Address, self, vm)
	if err != nil {
		return fail(err)
	}
	base := fleet.CommonBase(a, b)
	live := storage.MovePrefix + storage.DefaultLabel(time.Now())
	if err := relay(live, base); err != nil {
		return fail(err)
	}
	// 2. Stopped: what changed meanwhile.
	_ = fleet.MoveStep(ctx, cli, vm, m, "stopping")
	down := time.Now()
	if err := remote(src, "down", vm); err != nil {
		return fail(fmt.Errorf("stopping %s on %s: %w", vm, m.From, err))
	}
	stopped = true
	_ = fleet.MoveStep(ctx, cli, vm, m, "sending the rest")
	last := storage.MovePrefix + storage.DefaultLabel(time.Now().Add(time.Second))
	if err := relay(last, live); err != nil {
		return fail(err)
	}
	// 3. The handover: from here the target owns the VM.
	if err := fleet.Handover(ctx, cli, vm, m); err != nil {
		return fail(err)
	}
	fmt.Fprintf(e.stdout, "%s is placed on %s; waiting for it to run there\n", vm, m.To)
	ran, err := waitRunning(ctx, cli, vm, m.To, wait)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "moved %s from %s to %s: down for %s\n", vm, m.From, m.To, ran.Sub(down).Round(100*time.Millisecond))
	return nil
}

// waitRunning waits until host says vm runs, and returns when it saw it.
func waitRunning(ctx context.Context, cli *clientv3.Client, vm, host string, wait time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		st, err := fleet.Load(ctx, cli)
		if err == nil {
			for _, v := range st.Hosts[host].VMs {
				if v.Name == vm && v.State == string(lifecycle.Running) && v.Ready {
					return time.Now(), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s is placed on %s but did not run there within %s; see microvm fleet status, and the journal of microvm-host on %s", vm, host, wait, host)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
