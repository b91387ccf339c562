package journal

import (
	"strings"
	"time"
	"unicode/utf8"
)

// Filter keeps an entry or not.
type Filter func(*Entry) bool

// Unit keeps the entries of a systemd unit, as journalctl -u does: those
// its processes logged, and those systemd logged about it. A name without
// a suffix is a service.
func Unit(name string) Filter {
	if !strings.Contains(name, ".") {
		name += ".service"
	}
	return func(e *Entry) bool {
		return e.Field("_SYSTEMD_UNIT") == name || e.Field("UNIT") == name || e.Field("OBJECT_SYSTEMD_UNIT") == name
	}
}

// maxMessage bounds the message printed of one entry.
const maxMessage = 64 << 10

// Short writes e as journalctl's short format does: "Dec 05 17:21:13
// host sshd[812]: message", in local time. What the guest wrote is made
// safe for a terminal: control characters (escape sequences) are shown
// as \xNN, invalid UTF-8 is replaced, a long message is cut; the lines of
// a message after its first are indented.
func Short(e *Entry) string {
	ident := e.Field("SYSLOG_IDENTIFIER")
	if ident == "" {
		ident = e.Field("_COMM")
	}
	if ident == "" {
		ident = "unknown"
	}
	if pid := e.Field("_PID"); pid != "" {
		ident += "[" + pid + "]"
	} else if pid := e.Field("SYSLOG_PID"); pid != "" {
		ident += "[" + pid + "]"
	}
	head := e.Realtime.Local().Format(time.Stamp) + " " + safe(e.Field("_HOSTNAME"), 256, "") + " " + safe(ident, 256, "") + ": "
	return head + safe(e.Field("MESSAGE"), maxMessage, strings.Repeat(" ", utf8.RuneCountInString(head)))
}

// safe is s for a terminal, at most max bytes; newlines are followed by
// indent.
func safe(s string, max int, indent string) string {
	cut := len(s) > max
	if cut {
		s = s[:max]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == '\n' && i < len(s)-1:
			b.WriteString("\n" + indent)
		case r == '\n':
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0:
			b.WriteString(`\x`)
			b.WriteByte("0123456789abcdef"[r>>4&0xf])
			b.WriteByte("0123456789abcdef"[r&0xf])
		default:
			b.WriteRune(r)
		}
	}
	if cut {
		b.WriteString("…")
	}
	return b.String()
}
