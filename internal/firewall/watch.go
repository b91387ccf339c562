package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// The watcher keeps the table as the program last loaded it. `nft flush
// ruleset` (what Debian's nftables.service does on a reload, and what many
// admins type) removes it, and a hand edit can open it; either way the VMs
// would reach each other, the host and the LAN. The watcher hears every
// change to the ruleset of its network namespace from the kernel (netlink
// group NFNLGRP_NFTABLES). When a change deletes the table or edits part of
// it, it fails closed at once: it sets every port of the VM bridges down, so
// no VM traffic passes at all. Then it compares the table rule by rule with
// the last ruleset the program loaded, loads that again, atomically, if they
// differ, and sets the ports it took down up again. One line in the log says
// what changed and how long the repair took.
//
// The last ruleset the program loaded is recorded per network namespace in
// RUN_DIR (config.Host.FirewallRecord) by every Replace and Update, under a
// lock the watcher takes too: a change apply makes is never taken for an
// edit, and the watcher's own repair, when it hears of it, compares equal.
// So it never loops. An Update changes part of the table, as an edit does:
// it announces the generation its transaction will have beforehand (see
// updateStamped), and the watcher compares that one before it sets any
// port down.

// recordPath is the file holding the ruleset last loaded in the network
// namespace of the calling thread.
func recordPath(h config.Host) (string, error) {
	ns, err := netnsID()
	if err != nil {
		return "", err
	}
	return h.FirewallRecord(ns), nil
}

// netnsID is the inode number of the calling thread's network namespace.
func netnsID() (string, error) {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return "", fmt.Errorf("reading the network namespace: %w", err)
	}
	return strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), nil
}

// lockRecord takes h's firewall lock, waiting for it.
func lockRecord(h config.Host) (unlock func(), err error) {
	d, err := safedir.OpenPrivateAll(h.RunDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	f, err := d.Lock(filepath.Base(h.FirewallLock()), true)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

func writeRecord(h config.Host, ruleset string) error {
	p, err := recordPath(h)
	if err != nil {
		return err
	}
	if err := safedir.WritePrivate(p, []byte(ruleset), 0o644); err != nil {
		return fmt.Errorf("recording the loaded table: %w", err)
	}
	return nil
}

// readRecord returns the recorded ruleset, or "" when there is none.
func readRecord(h config.Host) (string, error) {
	p, err := recordPath(h)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return string(b), err
}

// Adopt records the model's table as the one to keep, when the loaded
// table is that one: for a watcher starting on a table an apply loaded
// before anything recorded it.
func Adopt(in *config.Infra) error {
	unlock, err := lockRecord(in.Host)
	if err != nil {
		return err
	}
	defer unlock()
	want := Ruleset(in)
	ws, err := wanted(want)
	if err != nil {
		return err
	}
	cur, err := loaded()
	if err != nil {
		return err
	}
	if ch := cur.Changes(ws); len(ch) > 0 {
		return fmt.Errorf("the loaded table is not the one %s wants (%s); run microvm apply", in.File, strings.Join(ch, "; "))
	}
	if err := writeEgressRecord(in.Host, EgressOf(in)); err != nil {
		return err
	}
	return writeRecord(in.Host, want)
}

// Restore is one repair the watcher made.
type Restore struct {
	Heard   time.Time `json:"heard"`           // when the watcher heard of the change
	Changes []string  `json:"changes"`         // what differed
	Closed  time.Time `json:"closed"`          // when the VM ports were down
	Millis  int64     `json:"ms"`              // from hearing of the change to the ports up again
	Ports   []string  `json:"ports,omitempty"` // the VM ports it held down meanwhile
	Err     string    `json:"error,omitempty"` // why the table could not be loaded (the ports stay down)
}

// Watcher keeps the table of its network namespace (the one of the thread
// that calls Run) as recorded in Host's run directory.
type Watcher struct {
	Host config.Host
	// Logf writes one line of the log.
	Logf func(format string, args ...any)
	// Ready, if set, is called once the watcher hears every change and
	// has compared the table once.
	Ready func()
	// Restored, if set, is told of each repair.
	Restored func(Restore)
	// Loaded, if set, is called once the table is as recorded after it
	// was loaded anew (by apply or a repair) or first found so: the egress
	// sets are empty then, and the record may serve other VMs.
	Loaded func()

	ruleset string    // the last recorded ruleset, kept if the record goes
	closed  []string  // ports held down until the table is back
	closeAt time.Time // when they went down
}

// Resync is how often the watcher compares without having heard of a
// change to the table, in case the kernel dropped a notification; while it
// holds ports down after a failed repair it tries again every second.
var Resync = 10 * time.Second

// Run watches until stop is closed. Everything it does runs on the calling
// goroutine, locked to its thread by the caller where that matters (the
// tests run it inside a sandbox namespace): it starts no goroutine that
// touches the network.
//
// What the kernel says about a change decides how fast the watcher acts.
// A transaction that leaves the table deleted (nft flush ruleset, delete
// table) or changes part of it (a rule, a set element, the table's flags)
// is no work of the program (which replaces the whole table, or commits an
// Update it announced): the ports go down at once, before the comparison.
// A transaction that deletes the table and defines it anew (apply, or the
// watcher's own repair), or has the generation an Update announced, is
// compared first, and left alone when it is the recorded one.
func (w *Watcher) Run(stop <-chan struct{}) error {
	fd, err := subscribe()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	w.check(time.Now(), true)
	if w.Ready != nil {
		w.Ready()
	}
	last := time.Now()
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("waiting for nftables events: %w", err)
		}
		heard := time.Now()
		every := Resync
		if len(w.closed) > 0 {
			every = time.Second
		}
		news := untouched
		if n > 0 {
			switch news = drain(fd, buf, w.announced); news {
			case untouched:
				if time.Since(last) < every {
					continue
				}
			case edited:
				w.closeNow()
			}
		} else if time.Since(last) < every {
			continue
		}
		w.check(heard, news != untouched)
		last = time.Now()
	}
}

// subscribe opens a netlink socket that hears of every change to the
// ruleset in the calling thread's network namespace.
func subscribe() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	// Room for a big transaction's notifications; an overflow (ENOBUFS)
	// only means the watcher compares without knowing what changed.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listening for nftables events: %w", err)
	}
	return fd, nil
}

// What the notifications read at once say about the program's table.
type news int

// They are ordered: the later one says more, and wins (see drain).
const (
	untouched news = iota // nothing about it
	applied               // defined anew as a whole, or by an announced Update: as the program does
	edited                // deleted, or changed in part: not the program's doing
)

// nfnlSubsysNftables is NFNL_SUBSYS_NFTABLES, the high byte of the
// message type of every nftables notification.
const nfnlSubsysNftables = 10

// drain reads every pending notification and says what the last
// transaction that touched the table did to it. A transaction ends with a
// NEWGEN message, which holds its generation; every other message names
// its table in attribute 1. A transaction that changed part of the table
// without deleting it is the program's when announced says so of its
// generation.
func drain(fd int, buf []byte, announced func(gen uint32) bool) news {
	result, batch := untouched, untouched
	deleted := false // the batch so far deleted the table
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.ENOBUFS) {
			result = applied // some were lost: compare, as after an apply
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// EAGAIN: nothing more for now. A transaction whose NEWGEN
			// has not come yet counts too: what it did so far decides,
			// so an edit is never dropped for arriving in two reads.
			return max(result, batch)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return applied
		}
		for _, m := range msgs {
			if m.Header.Type>>8 != nfnlSubsysNftables {
				continue
			}
			op := m.Header.Type & 0xff
			if op == unix.NFT_MSG_NEWGEN {
				if batch == edited && !deleted && len(m.Data) >= 4 && announced(genOf(m.Data[4:])) {
					batch = applied
				}
				if batch != untouched {
					result = batch
				}
				batch, deleted = untouched, false
				continue
			}
			if len(m.Data) < 4 || m.Data[0] != unix.NFPROTO_INET || tableOf(m.Data[4:]) != Table {
				continue
			}
			if (op == unix.NFT_MSG_NEWSETELEM || op == unix.NFT_MSG_DELSETELEM) && slices.Contains(dynamicSets, setOf(m.Data[4:])) {
				continue // the egress resolver's, or their timeouts
			}
			switch {
			case op == unix.NFT_MSG_NEWTABLE && deleted:
				// Deleted and made again, as load does.
				batch = applied
			case op == unix.NFT_MSG_DELTABLE:
				batch, deleted = edited, true
			case batch == untouched:
				// A part changed, or the table's own flags (dormant
				// turns it off) with a NEWTABLE of its own.
				batch = edited
			}
		}
	}
}

// tableOf reads attribute 1 (NFTA_*_TABLE in every nftables object
// message, NFTA_TABLE_NAME in a table's own), a NUL-terminated name.
func tableOf(attrs []byte) string {
	return strings.TrimRight(string(attr(attrs, unix.NFTA_TABLE_NAME)), "\x00")
}

// setOf reads attribute 2 of a set element message
// (NFTA_SET_ELEM_LIST_SET), the set's name.
func setOf(attrs []byte) string {
	return strings.TrimRight(string(attr(attrs, unix.NFTA_SET_ELEM_LIST_SET)), "\x00")
}

// genOf reads the generation of a NEWGEN message (NFTA_GEN_ID), or 0.
func genOf(attrs []byte) uint32 {
	if v := attr(attrs, unix.NFTA_GEN_ID); len(v) == 4 {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

// attr is the value of the netlink attribute of type typ, nil when there
// is none.
func attr(attrs []byte, typ int) []byte {
	for len(attrs) >= 4 {
		l := int(attrs[0]) | int(attrs[1])<<8
		t := (int(attrs[2]) | int(attrs[3])<<8) & 0x3fff
		if l < 4 || l > len(attrs) {
			return nil
		}
		if t == typ {
			return attrs[4:l]
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return nil
}

// announced says whether gen is the generation an Update announced for
// its transaction in this network namespace (updateStamped).
func (w *Watcher) announced(gen uint32) bool {
	cookie, g, _, ok := readStamp(w.Host)
	if !ok || g != gen {
		return false
	}
	c, err := netnsCookie()
	return err == nil && c == cookie
}

// failClosed sets the VM ports down when the watcher keeps a table but
// could not compare it: they come up at the first check that finds it as
// recorded.
func (w *Watcher) failClosed() {
	if w.ruleset != "" {
		w.closeNow()
	}
}

// closeNow sets the VM ports down, unless they already are.
func (w *Watcher) closeNow() {
	if len(w.closed) > 0 {
		return
	}
	var err error
	w.closed, err = closePorts()
	w.closeAt = time.Now()
	if err != nil {
		w.Logf("firewall: setting VM ports down: %v", err)
	}
}

// check compares the loaded table with the record and repairs it. heard is
// when the change was heard of, and changed whether the table changed
// since the last check. A table it cannot compare is not trusted: the
// ports go down until a later check finds it as recorded.
func (w *Watcher) check(heard time.Time, changed bool) {
	unlock, err := lockRecord(w.Host)
	if err != nil {
		w.Logf("firewall: %v", err)
		w.failClosed()
		return
	}
	defer unlock()
	if rs, err := readRecord(w.Host); err != nil {
		w.Logf("firewall: reading the recorded table: %v", err)
	} else if rs != "" {
		w.ruleset = rs
	}
	if w.ruleset == "" {
		w.open() // nothing loaded here yet, so nothing to keep
		return
	}
	want, err := wanted(w.ruleset)
	if err != nil {
		w.Logf("firewall: %v", err)
		w.failClosed()
		return
	}
	cur, err := loaded()
	if err != nil {
		w.Logf("firewall: %v", err)
		w.failClosed()
		return
	}
	changes := cur.Changes(want)
	if len(changes) == 0 {
		w.open() // if the ports went down for a change someone undid
		if changed {
			w.loaded()
		}
		return
	}
	w.closeNow()
	r := Restore{Heard: heard, Changes: changes, Closed: w.closeAt, Ports: w.closed}
	if err := load(w.ruleset); err != nil {
		r.Err = err.Error()
		r.Millis = time.Since(heard).Milliseconds()
		w.Logf("firewall: %s; cannot load it again (%v): VM ports %s stay down", strings.Join(changes, "; "), err, orNone(w.closed))
		w.report(r)
		return
	}
	w.open()
	r.Millis = time.Since(heard).Milliseconds()
	w.loaded()
	msg := fmt.Sprintf("firewall: %s; restored table %s %s in %d ms", strings.Join(changes, "; "), Family, Table, r.Millis)
	if len(r.Ports) > 0 {
		msg += fmt.Sprintf("; VM ports %s were down from %.1f ms after the change until then", strings.Join(r.Ports, " "), float64(r.Closed.Sub(heard).Microseconds())/1000)
	}
	w.Logf("%s", msg)
	w.report(r)
}

func (w *Watcher) loaded() {
	if w.Loaded != nil {
		w.Loaded()
	}
}

func (w *Watcher) report(r Restore) {
	if w.Restored != nil {
		w.Restored(r)
	}
}

// open sets the ports w closed up again.
func (w *Watcher) open() {
	for _, name := range w.closed {
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			w.Logf("firewall: setting %s up again: %v", name, err)
		}
	}
	w.closed = nil
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

// closePorts sets down every port that is up on a bridge the program made
// (alias "microvm:NAME"): the VMs' TAPs, and anything else plugged in
// there. A bridge drops every frame from a port that is down.
func closePorts() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	bridges := map[int]bool{}
	for _, l := range links {
		if l.Type() == "bridge" && strings.HasPrefix(l.Attrs().Alias, config.AliasPrefix) {
			bridges[l.Attrs().Index] = true
		}
	}
	var closed []string
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if !bridges[a.MasterIndex] || a.Flags&net.FlagUp == 0 {
			continue
		}
		if err := netlink.LinkSetDown(l); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
			continue
		}
		closed = append(closed, a.Name)
	}
	return closed, errors.Join(errs...)
}
