package firewall

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Reading the table back costs more than the rest of a plan: nft takes
// tens of milliseconds to list a table with a thousand set elements, and
// the wanted table is loaded into a namespace of its own to be compared.
// A plan skips both when it can prove the table has not changed since the
// program loaded it. nftables counts committed transactions: every change
// to any table of a network namespace, by anyone (nft, iptables-nft, the
// watcher), is a transaction, and each adds exactly one to the
// namespace's generation (NFT_MSG_GETGEN). Replace reads the generation
// before and after its load: when it went up by exactly one, nothing but
// the load happened between, and it records that generation beside the
// ruleset (config.Host.FirewallGeneration). A later plan that finds the
// same generation, in the same namespace (its cookie, which the kernel
// never reuses, unlike the inode number the file is named by), knows the
// table is that ruleset exactly: no change was committed since. Any
// other generation, and the plan reads and compares the table as before.
// An Update, which only changes elements and counters, commits one
// transaction too, and stamps its ruleset the same way.
// The egress resolver's updates are transactions too: on a host with
// egress lists a plan after one compares the table again.

// generation is the current nftables generation of the calling thread's
// network namespace.
func generation() (uint32, error) {
	req := nl.NewNetlinkRequest(nfnlSubsysNftables<<8|unix.NFT_MSG_GETGEN, 0)
	req.AddData(nfgenmsg{})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return 0, fmt.Errorf("reading the nftables generation: %w", err)
	}
	for _, m := range msgs {
		attrs, err := nl.ParseRouteAttr(m[min(len(m), 4):])
		if err != nil {
			return 0, fmt.Errorf("reading the nftables generation: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^uint16(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == unix.NFTA_GEN_ID && len(a.Value) == 4 {
				return binary.BigEndian.Uint32(a.Value), nil
			}
		}
	}
	return 0, errors.New("reading the nftables generation: the kernel gave none")
}

// nfgenmsg is the header of an nftables request: family unspecified,
// version 0, resource 0.
type nfgenmsg struct{}

func (nfgenmsg) Len() int          { return 4 }
func (nfgenmsg) Serialize() []byte { return []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0} }

// netnsCookie is the kernel's id of the calling thread's network
// namespace, never reused while the machine runs.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// stamp is what FirewallGeneration holds: the namespace, its generation,
// and the hash of the ruleset loaded.
func stamp(cookie uint64, gen uint32, ruleset string) string {
	sum := sha256.Sum256([]byte(ruleset))
	return fmt.Sprintf("%d %d %s\n", cookie, gen, hex.EncodeToString(sum[:]))
}

func generationPath(h config.Host) (string, error) {
	ns, err := netnsID()
	if err != nil {
		return "", err
	}
	return h.FirewallGeneration(ns), nil
}

// loadStamped loads ruleset as load does and returns what to record
// once the ruleset's own record is written (writeStamp): "" when the
// generation does not prove that nothing else changed nftables meanwhile.
// The caller holds the record lock.
func loadStamped(h config.Host, ruleset string) (string, error) {
	p, err := generationPath(h)
	if err != nil {
		return "", err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("removing %s: %w", p, err)
	}
	before, errBefore := generation()
	if err := load(ruleset); err != nil {
		return "", err
	}
	after, errAfter := generation()
	cookie, errCookie := netnsCookie()
	if errBefore != nil || errAfter != nil || errCookie != nil || after != before+1 {
		return "", nil // not proven: the next plan reads the table
	}
	return stamp(cookie, after, ruleset), nil
}

// writeStamp records s, if there is one; a stamp that cannot be written
// only means the next plan reads the table.
func writeStamp(h config.Host, s string) {
	p, err := generationPath(h)
	if err != nil || s == "" {
		return
	}
	if err := safedir.WritePrivate(p, []byte(s), 0o644); err != nil {
		os.Remove(p)
	}
}

// lastLoaded returns the ruleset the program last loaded in this network
// namespace, when the generation proves the table is still exactly that,
// and ok false when it cannot tell (the plan then reads the table).
func lastLoaded(h config.Host) (ruleset string, ok bool) {
	ruleset, _, _, ok = proven(h)
	return ruleset, ok
}

// proven is lastLoaded, with the namespace's cookie and the generation
// that prove it.
func proven(h config.Host) (ruleset string, cookie uint64, gen uint32, ok bool) {
	cookie, gen, text, ok := readStamp(h)
	if !ok {
		return "", 0, 0, false
	}
	now, err := generation()
	if err != nil || now != gen {
		return "", 0, 0, false
	}
	if c, err := netnsCookie(); err != nil || c != cookie {
		return "", 0, 0, false
	}
	rs, err := readRecord(h)
	if err != nil || stamp(cookie, gen, rs) != text {
		return "", 0, 0, false
	}
	return rs, cookie, gen, true
}

// readStamp reads the stamp of this network namespace.
func readStamp(h config.Host) (cookie uint64, gen uint32, text string, ok bool) {
	p, err := generationPath(h)
	if err != nil {
		return 0, 0, "", false
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, 0, "", false
	}
	var hash string
	if _, err := fmt.Sscanf(string(b), "%d %d %s", &cookie, &gen, &hash); err != nil {
		return 0, 0, "", false
	}
	return cookie, gen, string(b), true
}

// updateStamped commits script, the transaction from old to ruleset
// (delta), when the generation proves the table is exactly old, and
// returns the stamp of ruleset as loadStamped does. Before it commits, it
// writes that stamp, with the generation the transaction is to have: so
// the watcher knows the transaction for the program's when it hears of it
// (Watcher.Run), and a plan meanwhile finds a stamp that does not match
// the record (still old) and reads the table. Anything else, a table not
// proven old, a stamp it cannot write, a transaction nft refuses, and it
// loads ruleset whole (loadStamped): the table is right either way. The
// caller holds the record lock.
func updateStamped(h config.Host, old, ruleset, script string) (string, error) {
	last, cookie, gen, ok := proven(h)
	p, err := generationPath(h)
	if !ok || last != old || err != nil {
		return loadStamped(h, ruleset)
	}
	next := stamp(cookie, gen+1, ruleset)
	if err := safedir.WritePrivate(p, []byte(next), 0o644); err != nil {
		return loadStamped(h, ruleset)
	}
	err = sendDelta(script, setTypes(parseRendered(ruleset)), gen)
	if errors.Is(err, errNotEncoded) {
		err = nft(script, "-f", "-")
	}
	if err != nil {
		return loadStamped(h, ruleset)
	}
	if after, err := generation(); err != nil || after != gen+1 {
		os.Remove(p) // not proven: the next plan reads the table
		return "", nil
	}
	return next, nil
}
