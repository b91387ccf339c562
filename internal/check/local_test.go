package check

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// TestTCPBounded: a VM's listener that answers the host's probe with an
// endless line gets MaxSeen bytes read, not as many as it sends in the
// probe's second.
func TestTCPBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				chunk := []byte(strings.Repeat("1", 32<<10))
				if _, err := c.Write([]byte("seen ")); err != nil {
					return
				}
				for {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
	}()
	r := LocalProber{}.TCP(Host, netip.MustParseAddrPort(l.Addr().String()))
	if !r.Reached {
		t.Fatalf("not reached: %v", r.Err)
	}
	if len(r.SeenAs) > MaxSeen {
		t.Errorf("kept %d bytes of the answer, want at most %d", len(r.SeenAs), MaxSeen)
	}
}
