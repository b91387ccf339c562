package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// An Update's script is short, but nft spends most of 20 ms on it before
// the kernel sees a byte: starting, and reading the table's sets and
// elements to check the new ones against. The program knows its own
// table's types, so it sends the same transaction as one nftables netlink
// batch itself (sendDelta) when every command is one it can encode: set
// and map elements of the per-VM sets (ifname, addresses, MACs, protocols
// and ports, concatenated; single-field interval sets of prefixes; maps to
// counters) and counters. Anything else is left to nft, as is the whole
// script when the kernel refuses the batch (which then changes nothing).

var errNotEncoded = errors.New("not encodable here")

// nftaObjUserdata is NFTA_OBJ_USERDATA of linux/netfilter/nf_tables.h,
// which x/sys/unix lacks.
const nftaObjUserdata = 8

// setType is what the table declares of a set or map: its key's fields,
// whether it holds intervals, and whether it maps to counters.
type setType struct {
	fields   []string
	interval bool
	counters bool
}

// setTypes reads the declarations of the sets and maps of a rendered
// ruleset.
func setTypes(r rendered) map[string]setType {
	out := map[string]setType{}
	for key, b := range r.objs {
		kind, name, _ := strings.Cut(key, " ")
		if kind != "set" && kind != "map" {
			continue
		}
		var t setType
		for _, l := range b.lines {
			switch {
			case strings.HasPrefix(l, "type "):
				k, v, isMap := strings.Cut(strings.TrimPrefix(l, "type "), " : ")
				t.fields = strings.Split(k, " . ")
				t.counters = isMap && v == "counter"
				if isMap && !t.counters {
					t.fields = nil // a map to data: left to nft
				}
			case l == "flags interval":
				t.interval = true
			}
		}
		out[name] = t
	}
	return out
}

// sendDelta commits script, as delta writes it, as one nftables batch that
// the kernel takes only while the namespace's generation is gen. It
// returns errNotEncoded, having sent nothing, when a command is not one it
// encodes.
func sendDelta(script string, types map[string]setType, gen uint32) error {
	msgs, err := encodeDelta(script, types)
	if err != nil {
		return err
	}
	return commitBatch(msgs, gen)
}

// encodeDelta is script's commands as nftables messages, or
// errNotEncoded.
func encodeDelta(script string, types map[string]setType) ([][]byte, error) {
	var msgs [][]byte
	prefix := fmt.Sprintf(" %s %s ", Family, Table)
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		verb, rest, ok := strings.Cut(line, prefix)
		if !ok {
			return nil, errNotEncoded
		}
		name, body, _ := strings.Cut(rest, " ")
		var m []byte
		var err error
		switch verb {
		case "add counter", "delete counter":
			m, err = counterMsg(verb == "add counter", name, body)
		case "add element", "delete element":
			m, err = elementMsg(verb == "add element", name, strings.TrimSuffix(strings.TrimPrefix(body, "{ "), " }"), types[name])
		default:
			err = errNotEncoded
		}
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// counterMsg is NEWOBJ or DELOBJ of counter name; body is its `{ comment
// "..." }` when added.
func counterMsg(add bool, name, body string) ([]byte, error) {
	attrs := []nl.NetlinkRequestData{
		nl.NewRtAttr(unix.NFTA_OBJ_TABLE, nl.ZeroTerminated(Table)),
		nl.NewRtAttr(unix.NFTA_OBJ_NAME, nl.ZeroTerminated(name)),
		nl.NewRtAttr(unix.NFTA_OBJ_TYPE, be32(unix.NFT_OBJECT_COUNTER)),
	}
	if !add {
		return nftMsg(unix.NFT_MSG_DELOBJ, 0, attrs), nil
	}
	data := nl.NewRtAttr(unix.NFTA_OBJ_DATA|unix.NLA_F_NESTED, nil)
	data.AddRtAttr(unix.NFTA_COUNTER_BYTES, make([]byte, 8))
	data.AddRtAttr(unix.NFTA_COUNTER_PACKETS, make([]byte, 8))
	attrs = append(attrs, data)
	if strings.TrimSpace(strings.Trim(body, "{}")) != "" {
		c, ok := strings.CutPrefix(body, `{ comment "`)
		c, ok2 := strings.CutSuffix(c, `" }`)
		if !ok || !ok2 || len(c) > 127 {
			return nil, errNotEncoded
		}
		// nft keeps a comment in the object's user data, a
		// type-length-value list: type 0 (NFTNL_UDATA_OBJ_COMMENT), with
		// its NUL.
		attrs = append(attrs, nl.NewRtAttr(nftaObjUserdata, append([]byte{0, byte(len(c) + 1)}, append([]byte(c), 0)...)))
	}
	return nftMsg(unix.NFT_MSG_NEWOBJ, unix.NLM_F_CREATE, attrs), nil
}

// elementMsg is NEWSETELEM or DELSETELEM of one element, as the template
// writes it, of set name.
func elementMsg(add bool, name, elem string, t setType) ([]byte, error) {
	if len(t.fields) == 0 || t.interval && len(t.fields) != 1 {
		return nil, errNotEncoded
	}
	key, objref, isMap := strings.Cut(elem, " : ")
	if isMap != t.counters {
		return nil, errNotEncoded
	}
	var elems []*nl.RtAttr
	if t.interval {
		p, err := netip.ParsePrefix(key)
		if err != nil || p != p.Masked() {
			return nil, errNotEncoded
		}
		// As nft sends a prefix: its first address, and the address after
		// its last marked as the end.
		end, ok := after(p)
		if !ok {
			return nil, errNotEncoded
		}
		elems = append(elems, setElem(p.Addr().AsSlice(), 0, ""), setElem(end.AsSlice(), unix.NFT_SET_ELEM_INTERVAL_END, ""))
	} else {
		k, err := encodeKey(key, t.fields)
		if err != nil {
			return nil, err
		}
		ref, err := strconv.Unquote(objref)
		if isMap && err != nil {
			return nil, errNotEncoded
		}
		elems = append(elems, setElem(k, 0, ref))
	}
	list := nl.NewRtAttr(unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED, nil)
	for _, e := range elems {
		list.AddChild(e)
	}
	attrs := []nl.NetlinkRequestData{
		nl.NewRtAttr(unix.NFTA_SET_ELEM_LIST_TABLE, nl.ZeroTerminated(Table)),
		nl.NewRtAttr(unix.NFTA_SET_ELEM_LIST_SET, nl.ZeroTerminated(name)),
		list,
	}
	if add {
		return nftMsg(unix.NFT_MSG_NEWSETELEM, unix.NLM_F_CREATE, attrs), nil
	}
	return nftMsg(unix.NFT_MSG_DELSETELEM, 0, attrs), nil
}

func setElem(key []byte, flags uint32, objref string) *nl.RtAttr {
	e := nl.NewRtAttr(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, nil)
	k := e.AddRtAttr(unix.NFTA_SET_ELEM_KEY|unix.NLA_F_NESTED, nil)
	k.AddRtAttr(unix.NFTA_DATA_VALUE, key)
	if flags != 0 {
		e.AddRtAttr(unix.NFTA_SET_ELEM_FLAGS, be32(flags))
	}
	if objref != "" {
		e.AddRtAttr(unix.NFTA_SET_ELEM_OBJREF, nl.ZeroTerminated(objref))
	}
	return e
}

// after is the address after the last of p, false past the end.
func after(p netip.Prefix) (netip.Addr, bool) {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	next := last.Next()
	return next, next.IsValid()
}

// encodeKey is the value nftables keeps for a key of the fields given:
// each field in network order, and in a concatenation each padded to 4
// bytes.
func encodeKey(key string, fields []string) ([]byte, error) {
	parts := strings.Split(key, " . ")
	if len(parts) != len(fields) {
		return nil, errNotEncoded
	}
	var out []byte
	for i, f := range fields {
		v, err := encodeField(parts[i], f)
		if err != nil {
			return nil, err
		}
		if len(fields) > 1 {
			v = append(v, make([]byte, (4-len(v)%4)%4)...)
		}
		out = append(out, v...)
	}
	return out, nil
}

func encodeField(s, typ string) ([]byte, error) {
	switch typ {
	case "ifname":
		name, err := strconv.Unquote(s)
		if err != nil || len(name) >= unix.IFNAMSIZ {
			return nil, errNotEncoded
		}
		b := make([]byte, unix.IFNAMSIZ)
		copy(b, name)
		return b, nil
	case "ipv4_addr", "ipv6_addr":
		a, err := netip.ParseAddr(s)
		if err != nil || a.Is4() != (typ == "ipv4_addr") {
			return nil, errNotEncoded
		}
		return a.AsSlice(), nil
	case "ether_addr":
		mac, err := net.ParseMAC(s)
		if err != nil || len(mac) != 6 {
			return nil, errNotEncoded
		}
		return mac, nil
	case "inet_proto":
		p := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP}[s]
		if p == 0 {
			return nil, errNotEncoded
		}
		return []byte{p}, nil
	case "inet_service":
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return nil, errNotEncoded
		}
		return binary.BigEndian.AppendUint16(nil, uint16(n)), nil
	}
	return nil, errNotEncoded
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// nftMsg is one nftables message of family inet.
func nftMsg(typ, flags int, attrs []nl.NetlinkRequestData) []byte {
	req := nl.NewNetlinkRequest(nfnlSubsysNftables<<8|typ, flags|unix.NLM_F_ACK)
	req.AddData(&nfgen{family: unix.NFPROTO_INET})
	for _, a := range attrs {
		req.AddData(a)
	}
	return req.Serialize()
}

// nfgen is the header of an nftables message.
type nfgen struct {
	family uint8
	resID  uint16
}

func (m *nfgen) Len() int { return 4 }
func (m *nfgen) Serialize() []byte {
	return binary.BigEndian.AppendUint16([]byte{m.family, unix.NFNETLINK_V0}, m.resID)
}

// commitBatch sends msgs between a batch's begin and end, one
// transaction, and waits for the kernel's answer to each: the first error
// it gives (having changed nothing), or nil once all were taken. The
// kernel refuses the batch (ERESTART) unless the generation is still gen
// (NFNL_BATCH_GENID, as nft asks too): nothing changed since it was read.
func commitBatch(msgs [][]byte, gen uint32) error {
	begin := nl.NewNetlinkRequest(unix.NFNL_MSG_BATCH_BEGIN, 0)
	begin.AddData(&nfgen{resID: unix.NFNL_SUBSYS_NFTABLES})
	begin.AddData(nl.NewRtAttr(unix.NFNL_BATCH_GENID, be32(gen)))
	end := nl.NewNetlinkRequest(unix.NFNL_MSG_BATCH_END, 0)
	end.AddData(&nfgen{resID: unix.NFNL_SUBSYS_NFTABLES})
	buf := begin.Serialize()
	// A refused batch is answered as its begin message: wait for that
	// too, and for an ack of each message.
	seqs := map[uint32]bool{begin.Seq: true}
	for _, m := range msgs {
		seqs[binary.NativeEndian.Uint32(m[8:12])] = true
		buf = append(buf, m...)
	}
	buf = append(buf, end.Serialize()...)
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// The kernel answers at once; a socket that does not is an error, and
	// the caller loads the table whole.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return err
	}
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	answer := make([]byte, 1<<16)
	for len(seqs) > 1 {
		n, _, err := unix.Recvfrom(fd, answer, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		replies, err := syscall.ParseNetlinkMessage(answer[:n])
		if err != nil {
			return err
		}
		for _, r := range replies {
			if r.Header.Type != unix.NLMSG_ERROR || len(r.Data) < 4 || !seqs[r.Header.Seq] {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(r.Data)); errno != 0 {
				return unix.Errno(-errno)
			}
			delete(seqs, r.Header.Seq)
		}
	}
	return nil
}
