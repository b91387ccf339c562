package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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

// Run runs a shell command in the guest and returns its output (stdout and
// stderr together) and exit status.
func Run(c *ssh.Client, command string) (string, int, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", -1, fmt.Errorf("opening an SSH session: %w", err)
	}
	defer s.Close()
	// CombinedOutput serializes the two streams' writes; two io.Copy into
	// one bytes.Buffer race and lose output.
	out, err := s.CombinedOutput(command)
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return string(out), 0, nil
	case errors.As(err, &exit):
		return string(out), exit.ExitStatus(), nil
	}
	return string(out), -1, fmt.Errorf("running %q: %w", command, err)
}
