package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/cli"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/fleet/fleettest"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/runner"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/storage/zfstest"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// The fleet benchmark: three hosts on one machine as test/fleet builds
// them (a sandbox each, a LAN namespace joining them, fleet init's
// certificates, a real 3-member etcd cluster, the daemons microvm host
// --fleet), first with 3 × 250 stand-in VMs (autostart = false: apply
// makes their host part and boots nothing), then with one real microVM
// that moves between two hosts.

const (
	fleetVMs  = 250 // stand-in VMs per host
	fleetReps = 3   // repetitions of each change and of the move and restart
)

// The stand-ins' names, host by host. Each VM's VMM has a system user of
// its own (USER-NAME), machine-wide; 750 new ones would not fit this
// kind of machine's system uid range (100-999) beside what is there, so
// hv1 and hv2 take the names `bench apply` (vm1...) and `bench metrics`
// (v1...) use and whose users exist, and hv3's users (w1...) are made
// before the timing and deleted at the end.
var fleetNames = []string{"vm", "v", "w"}

type fleetHost struct {
	name, addr string
	sb         *sandbox.Sandbox
	state, run string
	part, log  string
	daemon     *exec.Cmd
}

// fleetWorld is three hosts, etcd and the daemons.
type fleetWorld struct {
	dir, bin, certs string
	hosts           []*fleetHost
	lan             string
	cluster         *fleettest.Cluster
	sshds           []*sandbox.SSHD
	cli             *clientv3.Client // the admin's, from hv1
	env             []string         // the admin's commands' environment
	pool            string           // destroyed by close, if set
	binds           []string         // unmounted by close
	stopVMs         func()           // called by close once the daemons are gone
}

// newFleetWorld builds the hosts from the fleet's file text (made by
// file from the hosts' names, addresses and directories), certificates,
// etcd, sshd on each host if ssh, and runs the daemons.
func newFleetWorld(bin, dir string, file func([]*fleetHost) string, ssh bool, before func(*fleetWorld) error) (w *fleetWorld, err error) {
	w = &fleetWorld{dir: dir, bin: bin, certs: filepath.Join(dir, "certs")}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return w, err
	}
	id := make([]byte, 3)
	rand.Read(id)
	tag := hex.EncodeToString(id)
	for i, name := range []string{"hv1", "hv2", "hv3"} {
		w.hosts = append(w.hosts, &fleetHost{name: name, addr: fmt.Sprintf("192.168.77.%d", 11+i),
			state: filepath.Join(dir, name+"-state"), run: fmt.Sprintf("/run/mvbf-%s-%d", tag, i+1),
			part: filepath.Join(dir, name+".toml"), log: filepath.Join(dir, name+".log")})
	}
	src := file(w.hosts)
	w.lan = "mvbf-lan-" + tag
	if out, err := exec.Command("ip", "netns", "add", w.lan).CombinedOutput(); err != nil {
		w.lan = ""
		return w, fmt.Errorf("ip netns add: %s %w", out, err)
	}
	if err := ipCmds([][]string{{"-n", w.lan, "link", "add", "br0", "type", "bridge"}, {"-n", w.lan, "link", "set", "br0", "up"}}); err != nil {
		return w, err
	}
	var members []fleettest.Member
	var ms []string
	for i, h := range w.hosts {
		in, err := config.Parse(h.name, config.WithPart([]byte(src), config.Part{Host: h.name}))
		if err != nil {
			return w, err
		}
		if h.sb, err = sandbox.New(in); err != nil {
			return w, err
		}
		leg := fmt.Sprintf("lan%d", i)
		if err := ipCmds([][]string{
			{"-n", h.sb.Host, "link", "add", "fleet0", "type", "veth", "peer", "name", leg, "netns", w.lan},
			{"-n", h.sb.Host, "addr", "add", h.addr + "/24", "dev", "fleet0"},
			{"-n", h.sb.Host, "link", "set", "fleet0", "up"},
			{"-n", w.lan, "link", "set", leg, "master", "br0", "up"},
		}); err != nil {
			return w, err
		}
		// A push writes its file and all its new placements in one
		// transaction: 750 of them need more than etcd's default 128
		// operations (docs/fleet.md).
		m := fleettest.Member{Name: fmt.Sprintf("etcd%d", i+1), IP: netip.MustParseAddr(h.addr), Netns: h.sb.Host}
		members = append(members, m)
		ms = append(ms, m.Name+"="+h.addr)
	}
	if before != nil {
		if err := before(w); err != nil {
			return w, err
		}
	}
	w.env = append(os.Environ(), "MICROVM_FLEET_CERTS="+w.certs)
	initArgs := []string{"fleet", "init", "--dir", w.certs, "--hosts", "hv1,hv2,hv3", "--members", strings.Join(ms, ",")}
	if _, err := w.admin(initArgs...); err != nil {
		return w, err
	}
	if w.cluster, err = fleettest.Launch(w.certs, filepath.Join(dir, "etcd"), members); err != nil {
		return w, err
	}
	eps := strings.Join(w.cluster.Endpoints(), ",")
	w.env = append(w.env, "MICROVM_ETCD="+eps)
	if _, err := w.admin(append(initArgs, "--etcd", eps)...); err != nil {
		return w, err
	}
	if w.cli, err = fleettest.NewClient(w.hosts[0].sb.Host, w.cluster.Endpoints(), fleet.Certs{Dir: w.certs, Name: "root"}); err != nil {
		return w, err
	}
	if ssh {
		for _, h := range w.hosts {
			s, err := sandbox.StartSSHD(filepath.Join(dir, "ssh"), h.sb.Host, netip.MustParseAddr(h.addr), config.EnvFile+"="+h.part)
			if err != nil {
				return w, err
			}
			w.sshds = append(w.sshds, s)
		}
		// Every command runs inside a host's namespace already.
		w.env = append(w.env, "MICROVM_FLEET_SSH="+strings.Join(w.sshds[0].Client(w.hosts[0].sb.Host)[3:], " "))
	}
	for _, h := range w.hosts {
		logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return w, err
		}
		h.daemon = exec.Command("nsenter", "--net=/run/netns/"+h.sb.Host, "--", bin, "host", "--fleet", eps, "--name", h.name, "--certs", w.certs, "-f", h.part)
		h.daemon.Stdout, h.daemon.Stderr = logf, logf
		h.daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		err = h.daemon.Start()
		logf.Close()
		if err != nil {
			return w, err
		}
	}
	return w, nil
}

func ipCmds(cmds [][]string) error {
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %s %w", strings.Join(args, " "), strings.TrimSpace(string(out)), err)
		}
	}
	return nil
}

// admin runs microvm with the admin's certificate inside hv1's namespace.
func (w *fleetWorld) admin(args ...string) (string, error) {
	return w.on(w.hosts[0], args...)
}

// on runs microvm inside h's namespace.
func (w *fleetWorld) on(h *fleetHost, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.sb.Host, "--", w.bin}, args...)...)
	cmd.Env = w.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: microvm %s: %w\n%s", h.name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (w *fleetWorld) close() {
	for _, h := range w.hosts {
		if h.daemon != nil && h.daemon.Process != nil {
			syscall.Kill(-h.daemon.Process.Pid, syscall.SIGTERM)
			done := make(chan struct{})
			go func() { h.daemon.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				syscall.Kill(-h.daemon.Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
	}
	if w.stopVMs != nil {
		w.stopVMs()
	}
	for _, s := range w.sshds {
		s.Stop()
	}
	if w.cli != nil {
		w.cli.Close()
	}
	if w.cluster != nil {
		w.cluster.Stop()
	}
	for _, b := range w.binds {
		unix.Unmount(b, unix.MNT_DETACH)
	}
	for _, h := range w.hosts {
		if h.sb != nil {
			h.sb.Close()
		}
		os.RemoveAll(h.run)
	}
	if w.lan != "" {
		exec.Command("ip", "netns", "del", w.lan).Run()
	}
	if w.pool != "" {
		if err := zfstest.Destroy(w.pool); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Remove(zfsPoolFile)
	}
}

// daemonLogs is the last lines of each daemon's log, for an error.
func (w *fleetWorld) daemonLogs() string {
	var b strings.Builder
	for _, h := range w.hosts {
		log, _ := os.ReadFile(h.log)
		fmt.Fprintf(&b, "\n%s's daemon:\n%s", h.name, supervise.Tail(log, 15))
	}
	return b.String()
}

// statusEvent is a host's status as the admin's watch saw it arrive.
type statusEvent struct {
	at time.Time
	hs fleet.HostStatus
}

// watchStatus sends every host status written after now, with the time
// it arrived, until ctx ends.
func (w *fleetWorld) watchStatus(ctx context.Context) (<-chan statusEvent, error) {
	resp, err := w.cli.Get(ctx, fleet.HostsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, err
	}
	ch := make(chan statusEvent, 64)
	wc := w.cli.Watch(ctx, fleet.HostsPrefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	go func() {
		defer close(ch)
		for r := range wc {
			at := time.Now()
			for _, ev := range r.Events {
				if ev.Type != clientv3.EventTypePut || string(ev.Kv.Key) != fleet.StatusKey(fleet.HostOf(string(ev.Kv.Key))) {
					continue
				}
				var hs fleet.HostStatus
				if json.Unmarshal(ev.Kv.Value, &hs) == nil {
					select {
					case ch <- statusEvent{at, hs}:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	return ch, nil
}

var pushedRev = regexp.MustCompile(`pushed revision (\d+)`)

// pushed is one push, timed until every host applied it.
type pushed struct {
	rev     int64
	command time.Duration            // microvm fleet push, to its exit
	applied map[string]time.Duration // each host's status with the revision applied, from the push's start
	all     time.Duration            // the last of them
}

// push runs microvm fleet push of text and waits until every host's
// status says it applied that revision.
func (w *fleetWorld) push(text string) (pushed, error) {
	var p pushed
	file := filepath.Join(w.dir, "fleet.toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		return p, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	events, err := w.watchStatus(ctx)
	if err != nil {
		return p, err
	}
	t0 := time.Now()
	out, err := w.admin("fleet", "push", file)
	p.command = time.Since(t0)
	if err != nil {
		return p, err
	}
	m := pushedRev.FindStringSubmatch(out)
	if m == nil {
		return p, fmt.Errorf("no revision in fleet push's output:\n%s", out)
	}
	fmt.Sscan(m[1], &p.rev)
	p.applied = map[string]time.Duration{}
	for len(p.applied) < len(w.hosts) {
		select {
		case ev, ok := <-events:
			if !ok {
				return p, fmt.Errorf("revision %d: applied by %v only after 5 min%s", p.rev, p.applied, w.daemonLogs())
			}
			if ev.hs.Applied != p.rev {
				continue
			}
			if ev.hs.Error != "" {
				return p, fmt.Errorf("%s: %s%s", ev.hs.Host, ev.hs.Error, w.daemonLogs())
			}
			if _, seen := p.applied[ev.hs.Host]; !seen {
				p.applied[ev.hs.Host] = ev.at.Sub(t0)
				p.all = max(p.all, ev.at.Sub(t0))
			}
		case <-ctx.Done():
			return p, fmt.Errorf("revision %d: applied by %v only after 5 min%s", p.rev, p.applied, w.daemonLogs())
		}
	}
	return p, nil
}

// standInFleet is the fleet's file of 3 × fleetVMs stand-ins, each host's
// pinned, with one VM more on hv1 if extra.
func standInFleet(hosts []*fleetHost, extra bool) string {
	var b strings.Builder
	b.WriteString("[host]\nuplink = \"eth0\"\n")
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 128\nautostart = false\n")
	for _, h := range hosts {
		fmt.Fprintf(&b, "[fleet.host.%s]\naddress = %q\nmemory = %d\nstate_dir = %q\nrun_dir = %q\n", h.name, h.addr, 128*(fleetVMs+1), h.state, h.run)
	}
	for i, h := range hosts {
		for j := 1; j <= fleetVMs; j++ {
			fmt.Fprintf(&b, "[vm.%s%d]\nsubnet = %q\nhost = %q\n", fleetNames[i], j, subnet(i*fleetVMs+j), h.name)
		}
	}
	if extra {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = %q\nhost = \"hv1\"\n", fleetVMs+1, subnet(3*fleetVMs+1))
	}
	return b.String()
}

// singleHost is hv1's VMs as one host's file: what the fleet's numbers
// are compared with.
func singleHost(state, run string, extra bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\n", state, run)
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 128\nautostart = false\n")
	for j := 1; j <= fleetVMs; j++ {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = %q\n", j, subnet(j))
	}
	if extra {
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = %q\n", fleetVMs+1, subnet(3*fleetVMs+1))
	}
	return b.String()
}

// applyTimes is the single host's microvm apply, as a process.
type applyTimes struct {
	first          time.Duration // the median of fleetReps, each in a fresh sandbox
	add, remove    []time.Duration
	addMed, remMed time.Duration
}

// measureSingles is measureSingle fleetReps times, each in a fresh
// sandbox: the median first apply, and the medians of every add and
// remove.
func measureSingles(bin, dir, name string, text func(state, run string, extra bool) string) (applyTimes, error) {
	var r applyTimes
	var firsts []time.Duration
	for i := range fleetReps {
		time.Sleep(settleAfterClose)
		one, err := measureSingle(bin, filepath.Join(dir, fmt.Sprint(i)), name, text)
		if err != nil {
			return r, err
		}
		firsts = append(firsts, one.first)
		r.add, r.remove = append(r.add, one.add...), append(r.remove, one.remove...)
	}
	r.first, r.addMed, r.remMed = median(firsts), median(r.add), median(r.remove)
	return r, nil
}

// measureSingle times microvm apply of hv1's 250 VMs on one host, in a
// sandbox of its own: the first apply, then adding and removing one VM.
// text is the file, with the VM more if extra, from its state and run
// directories.
func measureSingle(bin, dir, name string, text func(state, run string, extra bool) string) (applyTimes, error) {
	var r applyTimes
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	id := make([]byte, 3)
	rand.Read(id)
	state, run := filepath.Join(dir, name+"-state"), "/run/mvbs-"+hex.EncodeToString(id)
	defer os.RemoveAll(run)
	file := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(file, []byte(text(state, run, false)), 0o644); err != nil {
		return r, err
	}
	base, err := config.Load(file)
	if err != nil {
		return r, err
	}
	sb, err := sandbox.New(base)
	if err != nil {
		return r, err
	}
	defer sb.Close()
	apply := func(extra bool) (time.Duration, error) {
		if err := os.WriteFile(file, []byte(text(state, run, extra)), 0o644); err != nil {
			return 0, err
		}
		t0 := time.Now()
		out, err := sandbox.Command(sb.Host, bin, "apply", "-f", file).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("microvm apply on one host: %s %w", out, err)
		}
		return time.Since(t0), nil
	}
	if r.first, err = apply(false); err != nil {
		return r, err
	}
	for range fleetReps {
		time.Sleep(time.Second)
		d, err := apply(true)
		if err != nil {
			return r, err
		}
		r.add = append(r.add, d)
		time.Sleep(time.Second)
		if d, err = apply(false); err != nil {
			return r, err
		}
		r.remove = append(r.remove, d)
	}
	r.addMed, r.remMed = median(r.add), median(r.remove)
	return r, nil
}

// hv3Users makes the users of hv3's stand-ins that do not exist, and
// returns a func that deletes them again.
func hv3Users() (func(), error) {
	var made []*hostnet.DelUser
	undo := func() {
		for _, d := range made {
			if err := d.Apply(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
	}
	for j := 1; j <= fleetVMs; j++ {
		name := fmt.Sprintf("%s%d", fleetNames[2], j)
		vm := &config.VM{Name: name, User: config.DefaultUser + "-" + name}
		if _, err := user.Lookup(vm.User); err == nil {
			continue
		}
		if err := hostnet.NewUser(vm).Apply(); err != nil {
			undo()
			return nil, err
		}
		made = append(made, &hostnet.DelUser{Name: vm.User, VM: name})
	}
	return undo, nil
}

type fleetPushResult struct {
	single      applyTimes
	part        applyTimes // hv1's part of the fleet's file, applied alone
	first       pushed
	add, remove []pushed
	addMed      time.Duration
	remMed      time.Duration
}

func measurePushes(bin, dir string) (r fleetPushResult, err error) {
	fmt.Printf("single host: microvm apply of %d stand-in VMs\n", fleetVMs)
	if r.single, err = measureSingles(bin, dir, "single", singleHost); err != nil {
		return r, err
	}
	fmt.Printf("  first apply %s, add one %s, remove one %s\n", ms(r.single.first), ms(r.single.addMed), ms(r.single.remMed))
	// The same VMs as hv1's part of the fleet's file (all 750 VMs in it,
	// the part naming 250), applied alone: what a host's apply costs in a
	// fleet before etcd, the daemon and the other hosts.
	time.Sleep(settleAfterClose)
	fmt.Printf("one host: microvm apply of hv1's part of the fleet's file\n")
	part := func(state, run string, extra bool) string {
		var hosts []*fleetHost
		for i, n := range []string{"hv1", "hv2", "hv3"} {
			h := &fleetHost{name: n, addr: fmt.Sprintf("192.168.77.%d", 11+i), state: state, run: run}
			if i > 0 { // never made: only hv1's part is applied
				h.state, h.run = fmt.Sprintf("%s-%d", state, i+1), fmt.Sprintf("%s-%d", run, i+1)
			}
			hosts = append(hosts, h)
		}
		vms := []string{}
		for j := 1; j <= fleetVMs; j++ {
			vms = append(vms, fmt.Sprintf("%s%d", fleetNames[0], j))
		}
		if extra {
			vms = append(vms, fmt.Sprintf("%s%d", fleetNames[0], fleetVMs+1))
		}
		return string(config.WithPart([]byte(standInFleet(hosts, extra)), config.Part{Host: "hv1", VMs: vms, Revision: 1}))
	}
	if r.part, err = measureSingles(bin, dir, "part", part); err != nil {
		return r, err
	}
	fmt.Printf("  first apply %s, add one %s, remove one %s\n", ms(r.part.first), ms(r.part.addMed), ms(r.part.remMed))
	undo, err := hv3Users()
	if err != nil {
		return r, err
	}
	defer undo()
	time.Sleep(settleAfterClose)
	fmt.Printf("fleet: 3 hosts, etcd, daemons\n")
	w, err := newFleetWorld(bin, filepath.Join(dir, "pushes"), func(hs []*fleetHost) string { return standInFleet(hs, false) }, false, nil)
	if err != nil {
		return r, err
	}
	defer w.close()
	hosts := w.hosts
	time.Sleep(settleAfterClose)
	show := func(what string, p pushed) {
		fmt.Printf("  %s: revision %d, push command %s, applied by hv1 %s, hv2 %s, hv3 %s; all %s\n", what, p.rev, ms(p.command),
			ms(p.applied["hv1"]), ms(p.applied["hv2"]), ms(p.applied["hv3"]), ms(p.all))
	}
	if r.first, err = w.push(standInFleet(hosts, false)); err != nil {
		return r, err
	}
	show("first push", r.first)
	var adds, rems []time.Duration
	for range fleetReps {
		time.Sleep(time.Second)
		p, err := w.push(standInFleet(hosts, true))
		if err != nil {
			return r, err
		}
		show("add one VM", p)
		r.add, adds = append(r.add, p), append(adds, p.all)
		time.Sleep(time.Second)
		if p, err = w.push(standInFleet(hosts, false)); err != nil {
			return r, err
		}
		show("remove it", p)
		r.remove, rems = append(r.remove, p), append(rems, p.all)
	}
	r.addMed, r.remMed = median(adds), median(rems)
	return r, nil
}

// moveResult is the move and the restart of one real microVM.
type moveResult struct {
	moves    []time.Duration // as microvm move prints it
	moveGap  []time.Duration // the guest's gap as the hosts' records show it
	moveCmd  []time.Duration // the whole command
	restarts []time.Duration // microvm restart's start to the guest ready again
	restGap  []time.Duration
	accel    string
}

var downFor = regexp.MustCompile(`down for (\S+)`)

// readyAt is when vm's supervisor recorded its guest ready, if it runs.
func readyAt(vm *config.VM) (time.Time, bool) {
	st, ok, _ := runner.ReadStarted(vm)
	if !ok || st.Ready == nil || !st.VMM().Alive() || !st.Run().Alive() {
		return time.Time{}, false
	}
	return *st.Ready, true
}

// gap polls vm as each host has it, every 50 ms, until stop: from the
// last time a ready guest was seen to the first time a guest started
// since was seen ready.
func gap(vms map[string]*config.VM, stop <-chan struct{}) <-chan time.Duration {
	out := make(chan time.Duration, 1)
	go func() {
		var first time.Time // the ready record seen first
		var lastSeen time.Time
		have := false
		for {
			now := time.Now()
			ready := time.Time{}
			for _, vm := range vms {
				if t, ok := readyAt(vm); ok {
					ready = t
				}
			}
			switch {
			case !ready.IsZero() && !have:
				first, have, lastSeen = ready, true, now
			case !ready.IsZero() && ready.Equal(first):
				lastSeen = now
			case !ready.IsZero():
				out <- now.Sub(lastSeen)
				return
			}
			select {
			case <-stop:
				out <- 0
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return out
}

func measureMove(bin, dir string) (r moveResult, err error) {
	if err := ensureImage(config.DefaultImage); err != nil {
		return r, err
	}
	r.accel = benchAccel(config.DefaultImage)
	var text string
	fileOf := func(hs []*fleetHost) string {
		var b strings.Builder
		fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\naccel = %q\nstorage = \"zfs\"\n", r.accel)
		b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n")
		for _, h := range hs {
			h.state = filepath.Join(zfsState, h.name)
			fmt.Fprintf(&b, "[fleet.host.%s]\naddress = %q\nmemory = 1024\nstate_dir = %q\nrun_dir = %q\nzfs_dataset = %q\n", h.name, h.addr, h.state, h.run, zfsPool+"/"+h.name)
		}
		b.WriteString("[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n")
		// A stand-in pinned on each host, so that no host's part is ever
		// empty: the firewall loads a table without VMs only since
		// 8a7e3a4, and a fleet of hosts with VMs is the usual case.
		for i, h := range hs {
			fmt.Fprintf(&b, "[vm.s%d]\nsubnet = \"10.%d.0.0/24\"\nhost = %q\nmemory = 128\nautostart = false\n", i+1, i+2, h.name)
		}
		text = b.String()
		return text
	}
	// Each host's datasets, made by the host part, and the cached image
	// bound in, as test/fleet does.
	before := func(w *fleetWorld) error {
		if err := newPool(); err != nil {
			return err
		}
		w.pool = zfsPool
		for d := zfsState; d != "/"; d = filepath.Dir(d) {
			os.MkdirAll(d, 0o755)
			os.Chmod(d, 0o755) // the VMM's user opens the kernel under state_dir
		}
		for i, h := range w.hosts {
			hostOnly := filepath.Join(w.dir, h.name+"-host.toml")
			part := []string{fmt.Sprintf("s%d", i+1)} // as the push will place it
			os.WriteFile(hostOnly, config.WithPart([]byte(text), config.Part{Host: h.name, VMs: part}), 0o644)
			if err := sandbox.Do(h.sb.Host, func() error {
				var out strings.Builder
				if code := cli.Main([]string{"apply", "--host-only", "-f", hostOnly}, strings.NewReader(""), &out, &out); code != 0 {
					return fmt.Errorf("apply --host-only on %s: exit %d\n%s", h.name, code, out.String())
				}
				return nil
			}); err != nil {
				return err
			}
			in, err := config.Load(hostOnly)
			if err != nil {
				return err
			}
			img := in.Host.ImageDir(config.DefaultImage)
			os.MkdirAll(img, 0o755)
			if err := unix.Mount(filepath.Join(benchState, "images", config.DefaultImage), img, "", unix.MS_BIND, ""); err != nil {
				return err
			}
			w.binds = append(w.binds, img)
		}
		return nil
	}
	w, err := newFleetWorld(bin, filepath.Join(dir, "move"), fileOf, true, before)
	if err != nil {
		return r, err
	}
	// vm1 on each host, for the records its supervisor keeps there.
	vms := map[string]*config.VM{}
	for _, h := range w.hosts {
		in, err := config.Parse(h.name, config.WithPart([]byte(text), config.Part{Host: h.name, VMs: []string{"vm1"}}))
		if err != nil {
			w.close()
			return r, err
		}
		vms[h.name] = &in.VMs[0]
	}
	w.stopVMs = func() {
		for _, vm := range vms {
			supervise.StopDetached(vm, 60*time.Second)
		}
	}
	defer w.close()
	byName := map[string]*fleetHost{}
	for _, h := range w.hosts {
		byName[h.name] = h
	}
	p, err := w.push(text)
	if err != nil {
		return r, err
	}
	fmt.Printf("pushed revision %d; waiting for vm1 to be ready on hv1\n", p.rev)
	if err := waitReady(vms["hv1"], 5*time.Minute); err != nil {
		return r, fmt.Errorf("%w%s", err, w.daemonLogs())
	}
	at := "hv1"
	for i := range fleetReps {
		to := map[string]string{"hv1": "hv2", "hv2": "hv1"}[at]
		time.Sleep(2 * time.Second)
		stop := make(chan struct{})
		g := gap(vms, stop)
		t0 := time.Now()
		out, err := w.admin("move", "vm1", "--to", to)
		cmd := time.Since(t0)
		if err != nil {
			close(stop)
			return r, fmt.Errorf("%w%s", err, w.daemonLogs())
		}
		m := downFor.FindStringSubmatch(out)
		d, derr := time.ParseDuration(strings.TrimSuffix(func() string {
			if m == nil {
				return ""
			}
			return m[1]
		}(), "."))
		if derr != nil {
			close(stop)
			return r, fmt.Errorf("no downtime in microvm move's output:\n%s", out)
		}
		if err := waitReady(vms[to], 2*time.Minute); err != nil {
			close(stop)
			return r, err
		}
		time.Sleep(200 * time.Millisecond)
		close(stop)
		gd := <-g
		fmt.Printf("  move %d, %s -> %s: down for %s (the hosts' records: %s), command %s\n", i+1, at, to, secs(d), secs(gd), secs(cmd))
		r.moves, r.moveGap, r.moveCmd = append(r.moves, d), append(r.moveGap, gd), append(r.moveCmd, cmd)
		at = to
	}
	h := byName[at]
	for i := range fleetReps {
		time.Sleep(2 * time.Second)
		stop := make(chan struct{})
		g := gap(vms, stop)
		old, _ := readyAt(vms[at])
		t0 := time.Now()
		if _, err := w.on(h, "restart", "-f", h.part, "vm1"); err != nil {
			close(stop)
			return r, err
		}
		for {
			if t, ok := readyAt(vms[at]); ok && !t.Equal(old) {
				break
			}
			if time.Since(t0) > 5*time.Minute {
				close(stop)
				return r, fmt.Errorf("vm1 not ready on %s 5 min after microvm restart", at)
			}
			time.Sleep(50 * time.Millisecond)
		}
		d := time.Since(t0)
		time.Sleep(200 * time.Millisecond)
		close(stop)
		gd := <-g
		fmt.Printf("  restart %d on %s: ready again after %s (the host's record: %s)\n", i+1, at, secs(d), secs(gd))
		r.restarts, r.restGap = append(r.restarts, d), append(r.restGap, gd)
	}
	return r, nil
}

func waitReady(vm *config.VM, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, ok := readyAt(vm); ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s", vm.Name, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runFleet measures a push to a fleet of 3 hosts × 250 stand-in VMs
// against one host's apply, and a move's downtime against a restart.
func runFleet(args []string) error {
	only := ""
	if len(args) > 0 {
		only = args[0] // "push" or "move": one half, to try it
	}
	m := readMachine("")
	fmt.Printf("fleet; load average at start %s\n\n", m.Load)
	dir, err := os.MkdirTemp("", "bench-fleet-")
	if err != nil {
		return err
	}
	if os.Getenv("MICROVM_BENCH_KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		fmt.Printf("keeping %s (daemons' and etcd's logs)\n", dir)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building: %s %w (run from the repository's root)", out, err)
	}
	bin := filepath.Join(dir, "microvm")

	var pr fleetPushResult
	var mr moveResult
	if only != "move" {
		if pr, err = measurePushes(bin, dir); err != nil {
			return err
		}
	}
	if only != "push" {
		time.Sleep(settleAfterClose)
		fmt.Printf("\nmove: one real microVM\n")
		if mr, err = measureMove(bin, dir); err != nil {
			return err
		}
	}
	if only != "" {
		return nil
	}
	m.Accel = mr.accel
	return writeFleet(m, pr, mr)
}

func ratio(a, b time.Duration) string { return fmt.Sprintf("%.1f×", a.Seconds()/b.Seconds()) }

func writeFleet(m machine, pr fleetPushResult, mr moveResult) error {
	t := table{head: []string{"change", "one host: `microvm apply` of its file of 250 VMs", "one host: `microvm apply` of hv1's part (the fleet's file of 750, the part naming 250)", "fleet: `fleet push` until every host applied it (3 × 250 VMs)", "ratio fleet / one host", "`fleet push` command alone", "hv1 / hv2 / hv3 applied"}}
	per := func(p pushed) string {
		return fmt.Sprintf("%s / %s / %s", ms(p.applied["hv1"]), ms(p.applied["hv2"]), ms(p.applied["hv3"]))
	}
	medPush := func(ps []pushed, med time.Duration) pushed {
		for _, p := range ps {
			if p.all == med {
				return p
			}
		}
		return ps[0]
	}
	add, rem := medPush(pr.add, pr.addMed), medPush(pr.remove, pr.remMed)
	t.add("first (everything created)", ms(pr.single.first), ms(pr.part.first), ms(pr.first.all), ratio(pr.first.all, pr.single.first), ms(pr.first.command), per(pr.first))
	t.add("add one VM (median of 3)", ms(pr.single.addMed), ms(pr.part.addMed), ms(pr.addMed), ratio(pr.addMed, pr.single.addMed), ms(add.command), per(add))
	t.add("remove it again (median of 3)", ms(pr.single.remMed), ms(pr.part.remMed), ms(pr.remMed), ratio(pr.remMed, pr.single.remMed), ms(rem.command), per(rem))

	mv := table{head: []string{"", "run 1", "run 2", "run 3", "median", "ratio to the restart"}}
	row := func(name string, ds []time.Duration, base time.Duration) {
		cells := []any{name}
		for _, d := range ds {
			cells = append(cells, secs(d))
		}
		cells = append(cells, secs(median(ds)))
		if base > 0 {
			cells = append(cells, ratio(median(ds), base))
		} else {
			cells = append(cells, "")
		}
		mv.add(cells...)
	}
	row("`microvm restart vm1`: the command's start to the guest ready again", mr.restarts, 0)
	row("restart: the guest's gap in the host's records", mr.restGap, 0)
	row("`microvm move vm1`: \"down for\" (its stop to the target's status, in etcd, saying running and ready)", mr.moves, median(mr.restarts))
	row("move: the guest's gap in the hosts' records", mr.moveGap, median(mr.restGap))
	row("move: the whole command (sending while it runs included)", mr.moveCmd, 0)

	fmt.Println()
	t.print(os.Stdout)
	fmt.Println()
	mv.print(os.Stdout)

	var b strings.Builder
	b.WriteString("## Fleet\n\n")
	b.WriteString("Command: `go run ./bench fleet` (as root, from the repository's root; zfs-fuse running: `test/zfs-fuse.sh start`; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	fmt.Fprintf(&b, "etcd %s.\n\n", strings.TrimPrefix(firstLine(output("etcd", "--version")), "etcd Version: "))
	b.WriteString(`Three hosts on one machine as test/fleet builds them (docs/fleet.md): each a sandbox of network
namespaces with its own state_dir and run_dir, a LAN namespace joining them, ` + "`microvm fleet init`" + `'s certificates,
a 3-member etcd cluster (Debian's etcd, one member in each host's namespace, TLS with client certificates and etcd's
users and roles), and on each host the daemon ` + "`microvm host --fleet`" + `, all on the same 2 cores.

**A push.** 3 hosts × 250 stand-in VMs, each pinned to its host (` + "`autostart = false`" + `: a host's apply makes
their bridges, TAPs, storage directories and the nftables table, and boots nothing). The time runs from the start of
` + "`microvm fleet push`" + ` (a process, in hv1's namespace with the admin's certificate: it validates the file as a fleet and
each host's part, and writes the file in one transaction) until the admin's etcd watch has seen every host's status
(` + "`/microvm/hosts/HOST/status`" + `) with ` + "`applied`" + ` = the pushed revision: each daemon has seen the change, written its part,
applied it with apply's code, looked at its VMs and written its status. "Add one VM" pushes the file with vm251 more
(on hv1); "remove it again" pushes it without; three times each, medians (the first push is one run). Every host applies
on each push, since the revision in its part changes. A push writes the file and every placement in one
transaction of two writes (the placements are one key), within etcd's default limits. The single host is ` + "`microvm apply -f FILE`" + ` (a process) of hv1's 250 VMs in a sandbox of its own, in
the same run: three fresh sandboxes, the median of their first applies, and in each vm251 added and removed three times
(medians of the nine). The third column is the same with hv1's part of the fleet's file instead (as its daemon writes it:
the whole file of 750 VMs, and ` + "`[fleet.part]`" + ` naming hv1's 250), applied alone. Each VM's VMM has a system user of its own,
machine-wide; the users exist before either is timed (750 new ones would not fit this machine's system uid range beside
those there: hv1's and hv2's VMs take the names whose users ` + "`bench apply`" + ` and ` + "`bench metrics`" + ` made, and hv3's users are
made before the timing and deleted at the end).

`)
	b.WriteString(t.markdown())
	fmt.Fprintf(&b, `
**A move's downtime.** One real microVM (QEMU under %s, the lean Debian image, storage = "zfs" with each host's datasets
in one zfs-fuse pool), placed on hv1. `+"`microvm move vm1 --to hv2`"+` (then back, then again: %d moves, the first sends
the whole dataset, the others an increment) prints "down for": from the VM's stop on the source until the target's
status in etcd says it runs with its guest ready. Beside it, in the same run on the host where vm1 ended,
`+"`microvm restart -f PART vm1`"+` (%d times), timed from the command's start until the VM's supervisor records the guest
ready (sshd answers) again. Both are also seen the same way from outside: the bench polls the VM's supervisor records on
every host every 50 ms, and "the guest's gap" is from the last moment a ready guest was seen to the first moment a
newly started one was.

`, m.Accel, fleetReps, fleetReps)
	b.WriteString(mv.markdown())
	fmt.Fprintf(&b, "\nThe first push was applied by all three hosts %s after the push began: %s one host's apply of its 250 VMs (%s); "+
		"a one-VM change took %s (%s, against %s). Where the difference goes: the same host applying its part of the fleet's file alone "+
		"(every one of the 750 VMs parsed and validated, 250 applied; no etcd, no other host) takes %s of one host's apply, and %s for a change; "+
		"the rest is the push itself (%s for a change), the daemons' reading, writing and reporting through etcd, and three hosts "+
		"and three etcd members applying at once on %d cores.\n\n",
		ms(pr.first.all), ratio(pr.first.all, pr.single.first), ms(pr.single.first),
		ms(pr.addMed), ratio(pr.addMed, pr.single.addMed), ms(pr.single.addMed),
		ratio(pr.part.first, pr.single.first), ratio(pr.part.addMed, pr.single.addMed), ms(add.command), m.Cores)
	fmt.Fprintf(&b, "A move kept vm1 down %s as long as a restart by its own measure (%s against %s), and %s by the hosts' records "+
		"(%s against %s): a restart stops and starts the VM in one command on one host; a move also sends what changed "+
		"while it stopped, hands the VM over in etcd, and waits for the target's daemon to see it, start it, and report it "+
		"ready (it looks at its VMs every 5 s).\n",
		ratio(median(mr.moves), median(mr.restarts)), secs(median(mr.moves)), secs(median(mr.restarts)),
		ratio(median(mr.moveGap), median(mr.restGap)), secs(median(mr.moveGap)), secs(median(mr.restGap)))
	return writeSection("fleet", b.String())
}
