package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
)

// exitStatus is a command's own exit status, passed on without a message
// (microvm ssh NAME -- false exits 1, like ssh does).
type exitStatus int

func (s exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(s)) }

func sshCmd() *command {
	var wait time.Duration
	return &command{
		name:  "ssh",
		args:  "[-f FILE] [--wait DURATION] NAME [-- COMMAND...]",
		short: "log in to a VM as root, or run a command in it",
		long: `
Logs in to the VM as root over its own network, with the host's admin key
(STATE_DIR/admin/id_ed25519), checking the VM's host key against the one the
program made for it. With a COMMAND, runs it and exits with its exit status;
without, opens a shell. It is what ssh root@ADDRESS does, without setting up
keys or known_hosts. Reading the admin key needs root.

--wait keeps trying while the guest boots (its sshd is not up yet).

Examples:
  sudo microvm ssh vm1
  sudo microvm ssh vm1 -- uptime
  sudo microvm ssh --wait 2m vm2 -- systemctl is-system-running --wait`,
		flags: func(fs *pflag.FlagSet) {
			fs.DurationVar(&wait, "wait", 5*time.Second, "how long to keep trying to log in")
		},
		complete: vmNames,
		run: func(e *env, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("%w: name one VM", errUsage)
			}
			return inGuest(e, args[0], strings.Join(args[1:], " "), wait)
		},
	}
}

// inGuest runs command in the VM called name as root over SSH, or a shell
// if command is empty, and returns its exit status as an exitStatus. A VM
// that is stopped is said so at once; one that boots is waited for.
func inGuest(e *env, name, command string, wait time.Duration) error {
	in, vm, err := e.oneVM([]string{name})
	if err != nil {
		return err
	}
	// Without a manager the dial below still says what is wrong, only
	// after the wait.
	if m, err := e.manager(); err == nil && lifecycle.StateOf(m, vm).State == lifecycle.Stopped {
		return fmt.Errorf("%s is not running; start it with: microvm up %s", vm.Name, vm.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	c, err := guest.Dial(ctx, in.Host, vm)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	s.Stdout, s.Stderr = e.stdout, e.stderr
	if command != "" {
		s.Stdin = e.stdin
		err = s.Run(command)
	} else {
		err = shell(e.stdin, s)
	}
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit):
		return exitStatus(exit.ExitStatus())
	case errors.As(err, new(*ssh.ExitMissingError)):
		return exitStatus(255)
	}
	return err
}

// shell runs an interactive shell, with a terminal if stdin is one.
func shell(stdin io.Reader, s *ssh.Session) error {
	s.Stdin = stdin
	f, ok := stdin.(*os.File)
	if !ok { // not a terminal: a shell reading stdin
		return s.Run("")
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil { // not a terminal: a shell reading stdin
		return s.Run("")
	}
	// fd is a terminal (above); if its size cannot be read, 80x24 below.
	ws, _ := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	h, w := 24, 80
	if ws != nil && ws.Row > 0 {
		h, w = int(ws.Row), int(ws.Col)
	}
	term := os.Getenv("TERM")
	if term == "" {
		term = "xterm"
	}
	if err := s.RequestPty(term, h, w, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
		return err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old) // put back what was just read; nothing more to do if not
	if err := s.Shell(); err != nil {
		return err
	}
	return s.Wait()
}
