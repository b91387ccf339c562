package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SSHD is OpenSSH's server, run by a test inside a namespace it made: a
// host that the program reaches over SSH, as microvm move reaches the
// fleet's hosts. It lets root in by key only, the one client key of its
// directory, and logs to Log.
type SSHD struct {
	NS   string     // the namespace it listens in
	Addr netip.Addr // where it listens, on port 22
	Log  string     // its log (sshd -e)
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// sshPort is where every test sshd listens, each in its own namespace or
// on its own address.
const sshPort = 22

// StartSSHD starts sshd in namespace ns, listening on addr port 22, with
// its keys and configuration in dir. The sshds started with the same dir
// share one client key, so one client reaches them all (Client). It
// returns once sshd accepts connections. env ("KEY=VALUE") is set in its
// sessions: two sshds on one machine can stand for two hosts whose
// microvm reads its own infra.toml (MICROVM_FILE).
func StartSSHD(dir, ns string, addr netip.Addr, env ...string) (*SSHD, error) {
	if _, err := os.Stat("/run/netns/" + ns); err != nil {
		return nil, fmt.Errorf("sshd listens only in a namespace the test made: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	clientKey := filepath.Join(dir, "client_key")
	if _, err := os.Stat(clientKey); errors.Is(err, os.ErrNotExist) {
		if err := keygen(clientKey); err != nil {
			return nil, err
		}
	}
	name := "sshd-" + strings.ReplaceAll(addr.String(), ":", "_")
	hostKey := filepath.Join(dir, name+"_host_key")
	if err := keygen(hostKey); err != nil {
		return nil, err
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "known_hosts"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = fmt.Fprintf(f, "%s %s", addr, pub)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, name+".conf")
	body := strings.Join([]string{
		"ListenAddress " + netip.AddrPortFrom(addr, sshPort).String(),
		"HostKey " + hostKey,
		"AuthorizedKeysFile " + clientKey + ".pub",
		"PidFile none",
		"AllowUsers root",
		"PermitRootLogin prohibit-password",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no", // the keys are under the test's temporary directory
		"PrintMotd no",
	}, "\n") + "\n"
	for _, kv := range env {
		if strings.ContainsAny(kv, " \t\n\"") || !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("sshd: %q is not KEY=VALUE without spaces or quotes", kv)
		}
		body += "SetEnv " + kv + "\n"
	}
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		return nil, err
	}
	// sshd's privilege separation directory, which its package makes.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	s := &SSHD{NS: ns, Addr: addr, Log: filepath.Join(dir, name+".log"), dir: dir, done: make(chan struct{})}
	log, err := os.Create(s.Log)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	// nsenter (net only) runs sshd with this machine's mounts, so the
	// commands it runs see what the test mounted (ZFS datasets too).
	s.cmd = exec.Command("nsenter", "--net=/run/netns/"+ns, "--", "/usr/sbin/sshd", "-D", "-e", "-f", config)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting sshd: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if r := TCP(ns, netip.AddrPortFrom(addr, sshPort)); r.Reached && !r.Refused {
			return s, nil
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.Log)
			return nil, fmt.Errorf("sshd exited at start:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			b, _ := os.ReadFile(s.Log)
			return nil, fmt.Errorf("sshd does not accept connections 10 s after starting:\n%s", b)
		}
	}
}

// Client is the ssh command, run inside namespace from, that reaches this
// sshd (and every other started with the same directory) as root: the
// destination, root@ADDRESS (Target), and the remote command follow it.
// It trusts only the sshds' own host keys and never asks anything.
func (s *SSHD) Client(from string) []string {
	return []string{"nsenter", "--net=/run/netns/" + from, "--",
		"ssh", "-F", "none", "-i", filepath.Join(s.dir, "client_key"), "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + filepath.Join(s.dir, "known_hosts"), "-o", "GlobalKnownHostsFile=none",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-p", strconv.Itoa(sshPort)}
}

// Target is the destination of ssh that logs in to this sshd as root.
func (s *SSHD) Target() string { return "root@" + s.Addr.String() }

// Stop stops sshd. Sessions it started end with their commands.
func (s *SSHD) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}

// keygen makes an ed25519 key pair without a passphrase at path.
func keygen(path string) error {
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", filepath.Base(path), "-f", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ssh-keygen -f %s: %s: %w", path, strings.TrimSpace(string(out)), err)
	}
	return nil
}
