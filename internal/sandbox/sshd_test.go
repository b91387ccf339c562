package sandbox

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestSSHD: the client of Client logs in as root and runs a command, with
// the session's environment; another key is refused, and so is a server
// whose host key the client does not know.
func TestSSHD(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ssh", "ssh-keygen", "/usr/sbin/sshd", "nsenter")
	ns := testenv.NetNS(t)
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %s", out)
	}
	dir := t.TempDir()
	s, err := StartSSHD(dir, ns, netip.MustParseAddr("127.0.0.1"), "GREETING=hello")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()

	ssh := func(argv ...string) (string, error) {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return string(out), err
	}
	client := s.Client(ns)
	if out, err := ssh(append(client, s.Target(), "id -u; echo $GREETING")...); err != nil || out != "0\nhello\n" {
		t.Errorf("ssh %s: got %q, %v; want root's uid and the greeting", s.Target(), out, err)
	}

	other := filepath.Join(t.TempDir(), "other_key")
	if err := keygen(other); err != nil {
		t.Fatal(err)
	}
	withKey := append([]string{}, client...)
	for i, a := range withKey {
		if a == filepath.Join(dir, "client_key") {
			withKey[i] = other
		}
	}
	if out, err := ssh(append(withKey, s.Target(), "true")...); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("ssh with another key: got %q, %v; want Permission denied", out, err)
	}

	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := ssh(append(client, s.Target(), "true")...); err == nil || !strings.Contains(out, "Host key verification failed") {
		t.Errorf("ssh without the host key known: got %q, %v; want a failed verification", out, err)
	}

	if _, err := StartSSHD(dir, "no-such-namespace", netip.MustParseAddr("127.0.0.2")); err == nil {
		t.Error("sshd started outside a namespace of the test")
	}
}
