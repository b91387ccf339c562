// Package egress is the resolver of the VMs with an egress list: it runs
// in `microvm host`, beside the firewall it keeps, and listens on port 53
// of each such VM's gateway addresses (IPv4 and IPv6, UDP and TCP), where
// that VM's resolv.conf points. For each question of the VM there:
//
//   - from anyone but the VM itself (its own addresses), it answers
//     REFUSED;
//   - for a name that is not on the VM's list, it answers NXDOMAIN, with
//     the extended DNS error "Blocked", and logs it (once a minute per
//     name);
//   - for a listed name, it asks the VM's own DNS server (dns), over the
//     transport the VM used, puts every address of the answer (A and
//     AAAA, along its CNAMEs) into the firewall's sets for that VM, with
//     the answer's TTL as their timeout (MinTTL to MaxTTL), and only then
//     passes the answer on, so that the VM's next connection gets
//     through. If the sets cannot be filled, the VM gets SERVFAIL.
//
// The firewall lets each such VM reach only its own gateway's port 53 of
// the host, and on the internet only the addresses in its sets: no other
// DNS server, no DoH or DoT endpoint that is not a listed name. Without
// the resolver, such a VM reaches nothing by name: it fails closed.
//
// The resolver keeps what it put in the sets, and puts it back when the
// table was loaded anew (Refill), which empties them.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
)

// An address stays in a VM's set for its answer's TTL, but at least MinTTL
// (a client connects just after it resolves, and some answers say 0) and
// at most MaxTTL. Timeout is how long an upstream server has to answer.
var (
	MinTTL  = 30 * time.Second
	MaxTTL  = 24 * time.Hour
	Timeout = 5 * time.Second
)

// Resolver serves the VMs with an egress list. Make it with New.
type Resolver struct {
	logf func(format string, args ...any)
	ns   netns.NsHandle // the network namespace it was made in: sockets, queries and nft act there

	mu        sync.Mutex
	vms       map[string]firewall.EgressVM // by bridge
	listeners map[netip.Addr]*listener     // by gateway address
	live      map[entry]liveName           // what it put in the sets
	logged    map[string]time.Time         // refusals logged, by VM and name
}

type listener struct {
	bridge  string
	servers []*dns.Server
}

// entry is an element of the sets: a VM's bridge and an address.
type entry struct {
	bridge string
	addr   netip.Addr
}

type liveName struct {
	name  string
	until time.Time
}

// New makes a resolver that serves no VM yet (see Set), in the network
// namespace of the calling thread, logging with logf.
func New(logf func(format string, args ...any)) (*Resolver, error) {
	h, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("egress resolver: reading the network namespace: %w", err)
	}
	return &Resolver{logf: logf, ns: h, vms: map[string]firewall.EgressVM{}, listeners: map[netip.Addr]*listener{},
		live: map[entry]liveName{}, logged: map[string]time.Time{}}, nil
}

// Close stops every listener.
func (r *Resolver) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, l := range r.listeners {
		l.close()
		delete(r.listeners, addr)
	}
	r.ns.Close()
}

// Set makes the resolver serve vms, and only them: it listens on their
// gateways, stops listening where no VM of vms is, and forgets the
// addresses of names no longer listed. An error says which listeners
// could not be opened; the rest are served.
func (r *Resolver) Set(vms []firewall.EgressVM) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[netip.Addr]string{}
	r.vms = map[string]firewall.EgressVM{}
	for _, vm := range vms {
		r.vms[vm.Bridge] = vm
		for _, gw := range vm.Gateways {
			want[gw] = vm.Bridge
		}
	}
	for addr, l := range r.listeners {
		if want[addr] != l.bridge {
			l.close()
			delete(r.listeners, addr)
		}
	}
	var errs []error
	for addr, bridge := range want {
		if _, ok := r.listeners[addr]; ok {
			continue
		}
		l, err := r.listen(addr, bridge)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.listeners[addr] = l
	}
	for e, n := range r.live {
		vm, ok := r.vms[e.bridge]
		if !ok || !listed(vm.Names, n.name) {
			delete(r.live, e)
		}
	}
	return errors.Join(errs...)
}

// Refill puts the addresses it keeps back into the sets: after a load of
// the table, which empties them.
func (r *Resolver) Refill() error {
	r.mu.Lock()
	var lines []string
	now := time.Now()
	for e, n := range r.live {
		left := n.until.Sub(now).Truncate(time.Second)
		if left < time.Second {
			delete(r.live, e)
			continue
		}
		lines = append(lines, addElement(e, n.name, left)...)
	}
	r.mu.Unlock()
	if len(lines) == 0 {
		return nil
	}
	return r.nft(strings.Join(lines, "\n") + "\n")
}

// listen opens UDP and TCP on addr:53 for the VM on bridge. The sockets
// may bind the address before it exists (freebind), so that the order of
// apply's steps does not matter; they answer once it does.
func (r *Resolver) listen(addr netip.Addr, bridge string) (*listener, error) {
	l := &listener{bridge: bridge}
	family := "4"
	if addr.Is6() {
		family = "6"
	}
	at := netip.AddrPortFrom(addr, 53).String()
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			level, opt := unix.SOL_IP, unix.IP_FREEBIND
			if family == "6" {
				level, opt = unix.SOL_IPV6, unix.IPV6_FREEBIND
			}
			if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) { r.serve(bridge, w, req) })
	err := r.do(func() error {
		pc, err := lc.ListenPacket(context.Background(), "udp"+family, at)
		if err != nil {
			return err
		}
		tl, err := lc.Listen(context.Background(), "tcp"+family, at)
		if err != nil {
			pc.Close()
			return err
		}
		l.servers = []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: tl, Handler: handler}}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("egress resolver for %s: listening on %s: %w", bridge, at, err)
	}
	for _, s := range l.servers {
		go s.ActivateAndServe() // returns when closed
	}
	return l, nil
}

func (l *listener) close() {
	for _, s := range l.servers {
		_ = s.Shutdown() // an error only says it was not serving yet
	}
}

// serve answers one question of the VM on bridge.
func (r *Resolver) serve(bridge string, w dns.ResponseWriter, req *dns.Msg) {
	r.mu.Lock()
	vm, ok := r.vms[bridge]
	r.mu.Unlock()
	from := addrOf(w.RemoteAddr())
	answer := func(rcode int) {
		m := new(dns.Msg)
		m.SetRcode(req, rcode)
		_ = w.WriteMsg(m) // a lost answer is the client's to see
	}
	if !ok || !slices.Contains(vm.Addrs, from) {
		r.logOnce(bridge+" "+from.String(), "egress: a question on %s's gateway from %s, not the VM: refused", bridge, from)
		answer(dns.RcodeRefused)
		return
	}
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		answer(dns.RcodeNotImplemented)
		return
	}
	q := req.Question[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	if !validName(name) || !listed(vm.Names, name) {
		r.logOnce(vm.Name+" "+name, "egress: %s asked for %s (%s), which its egress list does not name: NXDOMAIN", vm.Name, printable(name), dns.TypeToString[q.Qtype])
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeNameError)
		if opt := req.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "not in the egress list of " + vm.Name})
		}
		_ = w.WriteMsg(m)
		return
	}
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	resp, err := r.forward(network, vm.Upstream, req)
	if err != nil {
		r.logf("egress: %s asked for %s: its DNS server %s: %v", vm.Name, name, vm.Upstream, err)
		answer(dns.RcodeServerFailure)
		return
	}
	if addrs, ttl := addresses(resp, q.Name); len(addrs) > 0 {
		if err := r.allow(bridge, name, addrs, ttl); err != nil {
			r.logf("egress: %s asked for %s: cannot let it reach %v: %v", vm.Name, name, addrs, err)
			answer(dns.RcodeServerFailure)
			return
		}
	}
	resp.Id = req.Id
	_ = w.WriteMsg(resp)
}

// forward asks upstream req's question, over network.
func (r *Resolver) forward(network string, upstream netip.Addr, req *dns.Msg) (*dns.Msg, error) {
	q := req.Copy()
	q.Id = dns.Id()
	c := &dns.Client{Net: network, Timeout: Timeout}
	var resp *dns.Msg
	err := r.do(func() error {
		var err error
		resp, _, err = c.Exchange(q, netip.AddrPortFrom(upstream, 53).String())
		return err
	})
	return resp, err
}

// addresses are the A and AAAA records of resp for qname, following its
// CNAMEs, and the least TTL along the way.
func addresses(resp *dns.Msg, qname string) ([]netip.Addr, time.Duration) {
	names := map[string]bool{strings.ToLower(qname): true}
	ttl := uint32(1<<32 - 1)
	for range 16 { // a chain of CNAMEs, in any order; 16 is more than any resolver follows
		grew := false
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && names[strings.ToLower(c.Hdr.Name)] && !names[strings.ToLower(c.Target)] {
				names[strings.ToLower(c.Target)] = true
				ttl = min(ttl, c.Hdr.Ttl)
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	var out []netip.Addr
	least := ttl
	for _, rr := range resp.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		default:
			continue
		}
		if !names[strings.ToLower(rr.Header().Name)] {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip); ok && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
			least = min(least, rr.Header().Ttl)
		}
	}
	return out, time.Duration(least) * time.Second
}

// allow puts addrs into the sets for the VM on bridge, for ttl (within
// MinTTL and MaxTTL), and keeps them for Refill.
func (r *Resolver) allow(bridge, name string, addrs []netip.Addr, ttl time.Duration) error {
	ttl = min(max(ttl, MinTTL), MaxTTL)
	var lines []string
	for _, a := range addrs {
		lines = append(lines, addElement(entry{bridge, a}, name, ttl)...)
	}
	// Kept before they are added: a load of the table between the two
	// (apply's) is followed by a Refill that puts them back.
	until := time.Now().Add(ttl)
	r.mu.Lock()
	old := map[entry]liveName{}
	for _, a := range addrs {
		e := entry{bridge, a}
		if n, ok := r.live[e]; ok {
			old[e] = n
		}
		r.live[e] = liveName{name, until}
	}
	r.mu.Unlock()
	if err := r.nft(strings.Join(lines, "\n") + "\n"); err != nil {
		r.mu.Lock()
		for _, a := range addrs {
			e := entry{bridge, a}
			if n, ok := old[e]; ok {
				r.live[e] = n
			} else {
				delete(r.live, e)
			}
		}
		r.mu.Unlock()
		return err
	}
	return nil
}

// addElement is the nft script that puts e into its set with a timeout of
// ttl, whether it is there or not: added (with any timeout), deleted and
// added again, in the one transaction of the script. name is a valid DNS
// name (validName), and bridge a VM's: neither can break out of quotes.
func addElement(e entry, name string, ttl time.Duration) []string {
	set := firewall.EgressSet
	if e.addr.Is6() {
		set = firewall.EgressSet6
	}
	elem := fmt.Sprintf("%q . %s", e.bridge, e.addr)
	head := fmt.Sprintf("element %s %s %s", firewall.Family, firewall.Table, set)
	return []string{
		fmt.Sprintf("add %s { %s timeout 1s }", head, elem),
		fmt.Sprintf("delete %s { %s }", head, elem),
		fmt.Sprintf("add %s { %s timeout %ds comment %q }", head, elem, int(ttl/time.Second), name),
	}
}

func (r *Resolver) nft(script string) error {
	return r.do(func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %s: %w", strings.TrimSpace(string(out)), err)
		}
		return nil
	})
}

// do runs f on a thread in the resolver's network namespace: the DNS
// library serves each question on a goroutine of its own, on any thread.
func (r *Resolver) do(f func() error) error {
	runtime.LockOSThread()
	cur, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the network namespace: %w", err)
	}
	defer cur.Close()
	if cur.Equal(r.ns) {
		defer runtime.UnlockOSThread()
		return f()
	}
	if err := netns.Set(r.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering the resolver's network namespace: %w", err)
	}
	defer func() {
		// A thread that cannot go back stays locked: the runtime ends it.
		if netns.Set(cur) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return f()
}

// logOnce logs once a minute for key.
func (r *Resolver) logOnce(key, format string, args ...any) {
	r.mu.Lock()
	last, seen := r.logged[key]
	now := time.Now()
	if seen && now.Sub(last) < time.Minute {
		r.mu.Unlock()
		return
	}
	if len(r.logged) > 10000 { // a VM asking for endless names: start again
		clear(r.logged)
	}
	r.logged[key] = now
	r.mu.Unlock()
	r.logf(format, args...)
}

// listed reports whether name is on the list.
func listed(names []string, name string) bool {
	for _, n := range names {
		if (config.Egress{Name: n}).Matches(name) {
			return true
		}
	}
	return false
}

// validName accepts the names the resolver forwards: lowercase letters,
// digits, '-' and '_' in dot-separated labels. A question may carry any
// byte in a name; such a name is no name of a list, and never reaches the
// firewall's comments.
func validName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// printable is name for the log, its odd bytes quoted.
func printable(name string) string {
	if validName(name) {
		return name
	}
	return fmt.Sprintf("%q", name)
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}
