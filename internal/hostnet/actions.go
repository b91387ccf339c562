package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Each action below reads like the command a person would type, and applies
// the same change through netlink. Apply succeeds when the change is already
// in place.

// Sysctl sets one kernel parameter, for a reason that goes without
// saying unless Why says it.
type Sysctl struct{ Key, Value, Why string }

func (a *Sysctl) String() string {
	s := fmt.Sprintf("sysctl -w %s=%s", a.Key, a.Value)
	if a.Why != "" {
		s += "  # " + a.Why
	}
	return s
}
func (a *Sysctl) Apply() error {
	path := "/proc/sys/" + strings.ReplaceAll(a.Key, ".", "/")
	if err := os.WriteFile(path, []byte(a.Value), 0o644); err != nil {
		return fmt.Errorf("setting %s: %w", a.Key, err)
	}
	return nil
}

// AddBridge creates a bridge in the program's link group and marks it with
// the alias. The kernel takes no alias in the create request, but does
// take the group: a bridge whose alias an interrupted apply did not set
// is still known as the program's, and the next apply sets it. A bridge of
// that name that is not the program's is an error, and is left alone.
type AddBridge struct{ Name, Alias string }

func (a *AddBridge) String() string {
	return fmt.Sprintf("ip link add %s group %d type bridge && ip link set %s alias %s", a.Name, config.LinkGroup, a.Name, a.Alias)
}

func (a *AddBridge) Apply() error {
	switch err := newBridge(a.Name, config.LinkGroup); {
	case err == nil:
		return setAlias(a.Name, a.Alias) // made just now (the request was exclusive): the program's
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("creating bridge %s: %w", a.Name, err)
	}
	return claim(a.Name, a.Alias, func(l netlink.Link) bool { return l.Type() == "bridge" && l.Attrs().Group == config.LinkGroup })
}

// AddTAP creates a persistent TAP owned by User, on bridge Master, and
// sets it up. vnet_hdr lets the VMM offload checksums; multi_queue gives
// each vCPU its own queue.
type AddTAP struct {
	Name, User, Alias, Master string
	MultiQueue                bool
}

func (a *AddTAP) String() string {
	s := fmt.Sprintf("ip tuntap add dev %s mode tap user %s group %s vnet_hdr", a.Name, a.User, a.User)
	if a.MultiQueue {
		s += " multi_queue"
	}
	return s + fmt.Sprintf(" && ip link set %s alias %s master %s && ip link set %s up", a.Name, a.Alias, a.Master, a.Name)
}

func (a *AddTAP) flags() netlink.TuntapFlag {
	f := netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR
	if a.MultiQueue {
		f |= netlink.TUNTAP_MULTI_QUEUE
	}
	return f
}

// matches reports whether an existing TAP was made as this action makes it,
// for a.User's ids id (nil when the user does not exist).
func (a *AddTAP) matches(t *netlink.Tuntap, id *IDs) bool {
	if id == nil {
		return false
	}
	const mask = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE
	return t.Mode == netlink.TUNTAP_MODE_TAP && t.Flags&mask == a.flags() &&
		t.Owner == id.UID && t.Group == id.GID && !t.NonPersist
}

// Apply creates the TAP, or finishes one an interrupted apply made: a
// persistent TAP owned by a.User can only be the program's, as the kernel
// makes a TAP persistent only after its owner is set. Any other link of
// that name is an error, and is left alone: the TAP is created with
// IFF_TUN_EXCL, as opening a foreign TAP as root would attach to it and
// could change its owner.
func (a *AddTAP) Apply() error {
	uid, gid, err := lookupOwner(a.User)
	if err != nil {
		return err
	}
	if _, err := index(a.Name); err == nil {
		err := claim(a.Name, a.Alias, func(l netlink.Link) bool {
			t, ok := l.(*netlink.Tuntap)
			return ok && t.Owner == uid && !t.NonPersist
		})
		if err != nil {
			return err
		}
	} else if err := newTAP(a.Name, uint16(a.flags()), uid, gid); err != nil {
		return fmt.Errorf("creating TAP %s: %w", a.Name, err)
	}
	i, err := index(a.Name)
	if err != nil {
		return err
	}
	br, err := index(a.Master)
	if err != nil {
		return err
	}
	if err := setLink(i, a.Alias, br, false); err != nil {
		return fmt.Errorf("setting %s's alias and bridge %s: %w", a.Name, a.Master, err)
	}
	if err := setLink(i, "", 0, true); err != nil {
		return fmt.Errorf("setting %s up: %w", a.Name, err)
	}
	return nil
}

// newTAP creates the persistent TAP name with flags (IFF_*), owned by
// uid and gid, through /dev/net/tun as `ip tuntap add` does: the kernel
// makes TAPs through no netlink request.
func newTAP(name string, flags uint16, uid, gid uint32) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(flags | unix.IFF_TAP | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	for _, set := range []struct {
		req uint
		arg int
		why string
	}{{unix.TUNSETOWNER, int(uid), "TUNSETOWNER"}, {unix.TUNSETGROUP, int(gid), "TUNSETGROUP"}, {unix.TUNSETPERSIST, 1, "TUNSETPERSIST"}} {
		if err := unix.IoctlSetInt(fd, set.req, set.arg); err != nil {
			return fmt.Errorf("%s: %w", set.why, err)
		}
	}
	return nil
}

// setAlias marks the link name, which the program has just made, as its.
func setAlias(name, alias string) error {
	i, err := index(name)
	if err != nil {
		return err
	}
	if err := setLink(i, alias, 0, false); err != nil {
		return fmt.Errorf("setting alias of %s: %w", name, err)
	}
	return nil
}

// index is the index of the link name, asked of the kernel the way
// if_nametoindex(3) does: the actions below need no more of a link, and
// netlink's LinkByName reads all of it (a tenth of a millisecond, times
// thousands of actions at 250 VMs).
func index(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("finding %s: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("finding %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("finding %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// claim sets alias on the link name if it has it already or if unmarked
// (no alias yet) says it is the program's, and fails otherwise.
func claim(name, alias string, unmarked func(netlink.Link) bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	switch a := l.Attrs().Alias; {
	case a == alias:
		return nil
	case a != "" || !unmarked(l):
		return fmt.Errorf("%s exists and was not made by microvm (alias %q); it is left alone", name, a)
	}
	if err := netlink.LinkSetAlias(l, alias); err != nil {
		return fmt.Errorf("setting alias of %s: %w", name, err)
	}
	return nil
}

// AddAddr assigns an address to a link. An IPv6 address skips duplicate
// address detection (nodad): the gateway's address is the host's by
// design, and detection would hold it back for a second or two, when the
// VM and the resolver of its egress need it.
type AddAddr struct {
	Link   string
	Prefix netip.Prefix
}

func (a *AddAddr) String() string {
	s := fmt.Sprintf("ip addr add %s dev %s", a.Prefix, a.Link)
	if a.Prefix.Addr().Is6() {
		s += " nodad"
	}
	return s
}

func (a *AddAddr) Apply() error {
	i, err := index(a.Link)
	if err != nil {
		return err
	}
	var flags uint32
	if a.Prefix.Addr().Is6() {
		flags = unix.IFA_F_NODAD
	}
	if err := ignoreExist(newAddr(i, a.Prefix, flags)); err != nil {
		return fmt.Errorf("adding %s to %s: %w", a.Prefix, a.Link, err)
	}
	return nil
}

// DelAddr removes an address the model no longer has (a changed subnet).
type DelAddr struct {
	Link   string
	Prefix netip.Prefix
}

func (a *DelAddr) String() string { return fmt.Sprintf("ip addr del %s dev %s", a.Prefix, a.Link) }
func (a *DelAddr) Apply() error {
	l, err := netlink.LinkByName(a.Link)
	if err != nil {
		return fmt.Errorf("finding %s: %w", a.Link, err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("reading addresses of %s: %w", a.Link, err)
	}
	for _, addr := range addrs {
		if prefixOf(addr.IPNet) == a.Prefix {
			if err := netlink.AddrDel(l, &addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("removing %s from %s: %w", a.Prefix, a.Link, err)
			}
		}
	}
	return nil
}

// LinkUp sets a link administratively up.
type LinkUp struct{ Name string }

func (a *LinkUp) String() string { return fmt.Sprintf("ip link set %s up", a.Name) }
func (a *LinkUp) Apply() error {
	i, err := index(a.Name)
	if err != nil {
		return err
	}
	if err := setLink(i, "", 0, true); err != nil {
		return fmt.Errorf("setting %s up: %w", a.Name, err)
	}
	return nil
}

// SetMaster attaches a port to a bridge.
type SetMaster struct{ Name, Master string }

func (a *SetMaster) String() string {
	return fmt.Sprintf("ip link set %s master %s", a.Name, a.Master)
}

func (a *SetMaster) Apply() error {
	i, err := index(a.Name)
	if err != nil {
		return err
	}
	br, err := index(a.Master)
	if err != nil {
		return err
	}
	if err := setLink(i, "", br, false); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", a.Name, a.Master, err)
	}
	return nil
}

// DelLink deletes a link the program made. VM data is not touched.
type DelLink struct{ Name string }

func (a *DelLink) String() string { return fmt.Sprintf("ip link del %s", a.Name) }
func (a *DelLink) Apply() error {
	l, err := netlink.LinkByName(a.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", a.Name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("deleting %s: %w", a.Name, err)
	}
	return nil
}
