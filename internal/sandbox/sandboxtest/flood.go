package sandboxtest

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/sandbox"
)

// EchoPort is where Echo listens.
const EchoPort = sandbox.EchoPort

// Echo starts sandbox.Echo, failing t if it cannot.
func Echo(t testing.TB, ns, addr string) {
	t.Helper()
	if err := sandbox.Echo(ns, addr); err != nil {
		t.Fatal(err)
	}
}

// Flood runs sandbox.Flood: it returns when each probe that was answered
// had been sent, and fails t if the probes could not be sent.
func Flood(t testing.TB, ns string, to netip.AddrPort, d time.Duration, stop <-chan struct{}) []time.Time {
	got, err := sandbox.Flood(ns, to, d, stop)
	if err != nil {
		t.Error(err)
	}
	return got
}

// DropToAccept reads a chain's listing (nft -a list chain FAMILY TABLE
// CHAIN) and returns the handle of its first rule that drops, and that
// rule with accept instead: the hand edit that opens a firewall and keeps
// the number of its rules. Its comment, if any, stays.
func DropToAccept(listing string) (handle, rule string, ok bool) {
	for _, line := range strings.Split(listing, "\n") {
		text, h, found := strings.Cut(line, " # handle ")
		if !found {
			continue
		}
		text = strings.TrimSpace(text)
		stmts, comment, _ := strings.Cut(text, ` comment "`)
		if i := strings.LastIndex(stmts, " drop"); i >= 0 && strings.TrimSpace(stmts[i+len(" drop"):]) == "" {
			rule = stmts[:i] + " accept"
			if comment != "" {
				rule += ` comment "` + comment
			}
			return strings.TrimSpace(h), rule, true
		}
	}
	return "", "", false
}

// FlushHealed runs `nft flush ruleset` in namespace ns, where a watcher
// keeps the program's table, and fails t unless the table is back within a
// second.
func FlushHealed(t testing.TB, ns string) {
	t.Helper()
	if out, err := sandbox.Command(ns, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("nft flush ruleset: %s %v", out, err)
	}
	flushed := time.Now()
	for sandbox.Command(ns, "nft", "list", "table", "inet", "microvm").Run() != nil {
		if time.Since(flushed) > time.Second {
			t.Fatal("the table is not back a second after nft flush ruleset")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the table is back %s after nft flush ruleset", time.Since(flushed).Round(time.Millisecond))
}
