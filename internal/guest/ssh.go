package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Dial logs in to vm as root with the host's admin key, over the VM's own
// network, checking the VM's host key against the one the program made for
// it (no trust on first use). It retries until ctx ends, so it also waits
// for a booting guest's sshd. The connection is made in the network
// namespace of the calling thread.
func Dial(ctx context.Context, host config.Host, vm *config.VM) (*ssh.Client, error) {
	_, keyPath, err := AdminKey(host)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading the admin key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, fmt.Errorf("reading the admin key: %w", err)
	}
	// The host key is read at each try: a VM starting for the first time
	// gets it from its supervisor a moment after start.
	var want ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			return ssh.FixedHostKey(want)(hostname, remote, key)
		},
		Timeout: 5 * time.Second,
	}
	addr := net.JoinHostPort(vm.Addr.String(), "22")
	var last error
	for {
		hostPub, err := HostPublicKey(vm)
		if err == nil {
			want, _, _, _, err = ssh.ParseAuthorizedKey([]byte(hostPub))
		}
		if err == nil {
			var c *ssh.Client
			if c, err = ssh.Dial("tcp", addr, cfg); err == nil {
				return c, nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("logging in to %s (%s): %w (last error: %v)", vm.Name, addr, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// MaxOutput bounds what Run keeps of a command's output: the guest
// decides how much it sends, and the host holds it in memory.
const MaxOutput = 1 << 20

// Run runs a shell command in the guest and returns its output (stdout and
// stderr together) and exit status. More than MaxOutput bytes of output
// is an error, and ends the command's session.
func Run(c *ssh.Client, command string) (string, int, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", -1, fmt.Errorf("opening an SSH session: %w", err)
	}
	defer s.Close()
	// One writer for both streams, which serializes their writes (two
	// io.Copy into one bytes.Buffer race and lose output).
	out := &bounded{max: MaxOutput, over: func() { s.Close() }}
	s.Stdout, s.Stderr = out, out
	err = s.Run(command)
	if out.full() {
		return out.String(), -1, fmt.Errorf("running %q: more than %d bytes of output", command, MaxOutput)
	}
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return out.String(), 0, nil
	case errors.As(err, &exit):
		return out.String(), exit.ExitStatus(), nil
	}
	return out.String(), -1, fmt.Errorf("running %q: %w", command, err)
}

// bounded is a buffer that keeps at most max bytes; a write beyond fails,
// once calling over.
type bounded struct {
	mu   sync.Mutex
	b    bytes.Buffer
	max  int
	over func()
	hit  bool
}

func (w *bounded) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.b.Len()+len(p) > w.max {
		if !w.hit {
			w.hit = true
			w.over()
		}
		return 0, errors.New("too much output")
	}
	return w.b.Write(p)
}

func (w *bounded) full() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hit
}

func (w *bounded) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
