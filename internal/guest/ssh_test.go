package guest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// fakeSSHD serves SSH on a new loopback listener, as a guest's sshd
// would: every command it is asked to run answers with output, then
// exits with status 0.
func fakeSSHD(t *testing.T, output []byte) string {
	t.Helper()
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	signer, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.AddHostKey(signer)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				_, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					ch, chReqs, err := nc.Accept()
					if err != nil {
						continue
					}
					go func() {
						defer ch.Close()
						for r := range chReqs {
							r.Reply(r.Type == "exec", nil)
							if r.Type != "exec" {
								continue
							}
							ch.Write(output) // a write the client refuses ends here
							ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, 0))
							return
						}
					}()
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestRunBounded: a guest that answers a command with more output than
// MaxOutput (here 4 MiB) makes Run fail, holding no more than MaxOutput:
// the host keeps what it is sent in memory, and the guest decides how
// much it sends.
func TestRunBounded(t *testing.T) {
	for _, tt := range []struct {
		size int
		ok   bool
	}{
		{100, true},
		{MaxOutput, true},
		{4 << 20, false},
	} {
		addr := fakeSSHD(t, bytes.Repeat([]byte("A"), tt.size))
		c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: "root", HostKeyCallback: ssh.InsecureIgnoreHostKey()})
		if err != nil {
			t.Fatal(err)
		}
		out, status, err := Run(c, "yes")
		c.Close()
		switch {
		case tt.ok && (err != nil || status != 0 || len(out) != tt.size):
			t.Errorf("%d bytes: got %d bytes, status %d, %v; want them all, 0, no error", tt.size, len(out), status, err)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), "more than 1048576 bytes of output")):
			t.Errorf("%d bytes: got %d bytes, status %d, %v; want an error saying there was too much", tt.size, len(out), status, err)
		case len(out) > MaxOutput:
			t.Errorf("%d bytes: Run kept %d bytes, more than %d", tt.size, len(out), MaxOutput)
		}
	}
}
