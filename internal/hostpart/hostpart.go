// Package hostpart is what `microvm host` does: bring the host part of
// infra.toml back (at boot, as microvm-host.service) and keep its firewall
// while the host runs.
//
// The host part lives in the kernel (bridges, TAPs, forwarding, the
// nftables table) and is gone after a reboot. Under systemd, the host unit
// runs `microvm host` after the network and the distribution's firewall and
// before any VM: it applies the host part as `apply --host-only` would,
// trying again every few seconds while it cannot (an uplink that is not up
// yet, a pool not imported yet), mounts the VMs' directories nosuid,nodev
// again (storage.ProtectAll), tells systemd it is ready, and then keeps
// the firewall (firewall.Watcher) until it is stopped. Tailscale's routes
// are applied too, but a tailscaled that refuses them is only warned
// about: no VM needs them to start.
//
// On a host without systemd, up and apply start it detached (--detached):
// there is no boot to come back from, and up or apply have just checked the
// host part, so it only keeps the firewall, and exits once no VM has run
// for a while.
package hostpart

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// Options say how `microvm host` runs.
type Options struct {
	File string // infra.toml, absolute
	// Detached: started by up or apply on a host without systemd.
	Detached bool
}

// RetryEvery is how long the host part waits before it tries again to
// apply; Linger is how long a detached one outlives the last VM.
var (
	RetryEvery = 5 * time.Second
	Linger     = 10 * time.Second
)

// Run brings the host part back and keeps the firewall until stop is
// closed. It writes its log to log, one line per event.
func Run(opts Options, stop <-chan struct{}, log io.Writer) error {
	logf := logger(log)
	var in *config.Infra
	var last string
	for {
		var err error
		in, err = bringBack(opts, log)
		if err == nil {
			break
		}
		if opts.Detached {
			return err
		}
		msg := fmt.Sprintf("the host part is not applied: %v", err)
		if msg != last {
			logf("%s; trying again every %s", msg, RetryEvery)
			last = msg
		}
		notify(logf, "STATUS=waiting: "+strings.SplitN(msg, "\n", 2)[0])
		select {
		case <-stop:
			return nil
		case <-time.After(RetryEvery):
		}
	}

	h := in.Host
	st := State{ID: proc.Self(), Since: time.Now().UTC(), File: opts.File, Detached: opts.Detached}
	status := func() string {
		s := fmt.Sprintf("STATUS=keeping table %s %s", firewall.Family, firewall.Table)
		if last := st.Last(); last != nil {
			s += fmt.Sprintf("; %d repairs, the last at %s", st.Repairs, last.Heard.Local().Format(time.TimeOnly))
		}
		return s
	}
	// The state is for status: a failure to write it is logged, and the
	// firewall is kept all the same.
	save := func() {
		if err := WriteState(h, st); err != nil {
			logf("writing %s: %v", h.HostState(), err)
		}
	}
	w := &firewall.Watcher{
		Host: h,
		Logf: logf,
		Ready: func() {
			save()
			notify(logf, "READY=1\n"+status())
			logf("host part of %s applied; keeping table %s %s", opts.File, firewall.Family, firewall.Table)
		},
		Restored: func(r firewall.Restore) {
			st.Repaired(r)
			save()
			notify(logf, status())
		},
	}
	defer os.Remove(h.HostState()) // gone with us; if it stays, its pid says it is stale
	if opts.Detached {
		stop = untilIdle(h, stop, logf)
	}
	return w.Run(stop)
}

// notify tells systemd (if it runs us) state; a failure is logged: the
// firewall is kept whatever systemd knows of it.
func notify(logf func(string, ...any), state string) {
	if err := supervise.Notify(state); err != nil {
		logf("%v", err)
	}
}

// bringBack applies the host part (unless detached) and records the table
// the watcher keeps.
func bringBack(opts Options, log io.Writer) (*config.Infra, error) {
	in, err := config.Load(opts.File)
	if err != nil {
		return nil, err
	}
	if !opts.Detached {
		p, err := plan.Host(in)
		if err != nil {
			return nil, err
		}
		if len(p.Actions) > 0 {
			err = p.Apply(log)
		}
		var skipped plan.Skipped
		if errors.As(err, &skipped) {
			fmt.Fprintf(log, "warning: %v; no VM needs it, microvm apply tries again\n", err)
		} else if err != nil {
			return nil, err
		}
		protect(in, log)
	}
	return in, firewall.Adopt(in)
}

// protect mounts every VM's directory nosuid,nodev again (storage.Protect),
// as it was before the reboot: the guests' device nodes and setuid
// programs stay inert in the trees of VMs that do not start. A failure is
// a warning: a VM's supervisor mounts its own before it starts, and
// refuses to start it without.
func protect(in *config.Infra, log io.Writer) {
	acts, err := storage.ProtectAll(in.Host)
	if err != nil {
		fmt.Fprintf(log, "warning: %v\n", err)
	}
	for _, a := range acts {
		fmt.Fprintln(log, a)
		if err := a.Apply(); err != nil {
			fmt.Fprintf(log, "warning: %v\n", err)
		}
	}
}

// untilIdle returns a channel closed with stop, or once no VM keeper of h
// has run for Linger.
func untilIdle(h config.Host, stop <-chan struct{}, logf func(string, ...any)) <-chan struct{} {
	idle := make(chan struct{})
	go func() {
		defer close(idle)
		seen := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if anyVM(h) {
				seen = time.Now()
			} else if time.Since(seen) > Linger {
				logf("no VM has run for %s; stopping", Linger)
				return
			}
		}
	}()
	return idle
}

// anyVM reports whether a detached VM keeper of h runs.
func anyVM(h config.Host) bool {
	// No run directory (or none readable) means no keeper runs from it.
	entries, _ := os.ReadDir(h.RunDir)
	for _, e := range entries {
		if e.IsDir() && config.IsVMName(e.Name()) {
			if _, ok := supervise.KeeperPid(h.Departed(e.Name())); ok {
				return true
			}
		}
	}
	return false
}

// logger writes one line per call, with the time unless the journal,
// which has it, is listening.
func logger(w io.Writer) func(string, ...any) {
	journal := os.Getenv("JOURNAL_STREAM") != ""
	return func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if !journal {
			line = time.Now().UTC().Format(time.RFC3339) + " " + line
		}
		fmt.Fprintln(w, line)
	}
}
