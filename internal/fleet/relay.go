package fleet

// The mover's part of a move's data (docs/fleet.md, "Moving a VM"): the
// hosts hold no SSH keys to each other, so the mover runs `microvm fleet
// send` on the source and `microvm fleet receive` on the target, each over
// its own SSH connection, and copies the stream from one to the other.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// Relay sends vm's data at snapshot snap (taken if needed) from host src
// to host dst, the changes since snapshot base when base is not "": it
// runs `SSH... src MICROVM fleet send VM --snapshot SNAP [--base BASE]`
// and `SSH... dst MICROVM fleet receive VM`, and copies the first's
// output to the second's input. ssh is the ssh command and its options;
// src and dst its destinations (root@ADDRESS); microvm the program on the
// hosts as their shell runs it (e.g. "microvm -f /etc/microvm/infra.toml").
// It returns the bytes relayed, and an error with what each side said if
// either failed.
func Relay(ctx context.Context, ssh []string, src, dst, microvm string, vm, snap, base string) (bytes int64, err error) {
	if err := checkNames(ssh, vm, snap, base); err != nil {
		return 0, err
	}
	sendArgs := []string{"fleet", "send", vm, "--snapshot", snap}
	if base != "" {
		sendArgs = append(sendArgs, "--base", base)
	}
	var sendErr, recvErr tail
	send := remote(ctx, ssh, src, microvm, sendArgs...)
	send.Stderr = &sendErr
	recv := remote(ctx, ssh, dst, microvm, "fleet", "receive", vm)
	recv.Stderr = &recvErr
	recv.Stdout = io.Discard // what it says, the caller knows

	stream, err := send.StdoutPipe()
	if err != nil {
		return 0, err
	}
	in, err := recv.StdinPipe()
	if err != nil {
		return 0, err
	}
	if err := recv.Start(); err != nil {
		return 0, fmt.Errorf("running %s: %w", recv, err)
	}
	if err := send.Start(); err != nil {
		in.Close()
		recv.Wait()
		return 0, fmt.Errorf("running %s: %w", send, err)
	}
	n, copyErr := io.Copy(in, stream)
	// The receiver sees the end of the stream; a sender whose receiver
	// is gone stops writing.
	in.Close()
	stream.Close()
	serr, rerr := send.Wait(), recv.Wait()
	if serr == nil && rerr == nil && copyErr == nil {
		return n, nil
	}
	errs := []error{side("sending on "+src, serr, &sendErr), side("receiving on "+dst, rerr, &recvErr)}
	if serr == nil && rerr == nil {
		errs = append(errs, copyErr)
	}
	return n, fmt.Errorf("moving the data of %s from %s to %s (%d bytes relayed): %w", vm, src, dst, n, errors.Join(errs...))
}

// RemoteSnapshots lists the move snapshots of vm on host, oldest first:
// `SSH... host MICROVM fleet receive VM --list`.
func RemoteSnapshots(ctx context.Context, ssh []string, host, microvm, vm string) ([]string, error) {
	if err := checkNames(ssh, vm, "", ""); err != nil {
		return nil, err
	}
	out, err := Remote(ctx, ssh, host, microvm, "fleet", "receive", vm, "--list")
	if err != nil {
		return nil, fmt.Errorf("listing the move snapshots of %s: %w", vm, err)
	}
	var snaps []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if err := storage.CheckMoveSnapshot(line); err != nil {
			return nil, fmt.Errorf("listing the move snapshots of %s on %s: %w", vm, host, err)
		}
		snaps = append(snaps, line)
	}
	return snaps, nil
}

// Remote runs `SSH... host MICROVM ARGS...` and returns what it printed,
// at most remoteMax bytes: another host is not trusted to print little.
// The args become words of the host's shell line: checked names and flags
// only.
func Remote(ctx context.Context, ssh []string, host, microvm string, args ...string) ([]byte, error) {
	if len(ssh) == 0 {
		return nil, errors.New("no ssh command to reach the hosts with")
	}
	var stdout capped
	var stderr tail
	cmd := remote(ctx, ssh, host, microvm, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, side("on "+host+": microvm "+strings.Join(args, " "), err, &stderr)
	}
	return stdout.b, nil
}

// capped holds what a command prints, and fails it past remoteMax.
type capped struct{ b []byte }

const remoteMax = 1 << 20

func (c *capped) Write(p []byte) (int, error) {
	if len(c.b)+len(p) > remoteMax {
		return 0, fmt.Errorf("it printed more than %d bytes", remoteMax)
	}
	c.b = append(c.b, p...)
	return len(p), nil
}

// CommonBase is the newest move snapshot of the source's a (oldest first)
// that the target's b has too: the base of an incremental send. "" if
// there is none, and the whole dataset must travel.
func CommonBase(a, b []string) string {
	have := map[string]bool{}
	for _, s := range b {
		have[s] = true
	}
	for i := len(a) - 1; i >= 0; i-- {
		if have[a[i]] && strings.HasPrefix(a[i], storage.MovePrefix) {
			return a[i]
		}
	}
	return ""
}

// checkNames refuses names that are not a VM's and a move snapshot's,
// which become words of a command line a remote shell reads, and an empty
// ssh command.
func checkNames(ssh []string, vm, snap, base string) error {
	if len(ssh) == 0 {
		return errors.New("no ssh command to reach the hosts with")
	}
	if !config.IsVMName(vm) {
		return fmt.Errorf("%q is not a VM name", vm)
	}
	for _, s := range []string{snap, base} {
		if s == "" {
			continue
		}
		if err := storage.CheckMoveSnapshot(s); err != nil {
			return err
		}
	}
	return nil
}

// remote is `SSH... host MICROVM ARGS...`. ssh joins the words after the
// destination into one line for the host's shell: microvm is the caller's
// own, and the args are checked names and flags.
func remote(ctx context.Context, ssh []string, host, microvm string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, ssh[1:]...), host, microvm), args...)
	cmd := exec.CommandContext(ctx, ssh[0], argv...)
	cmd.WaitDelay = 10 * time.Second // a session that does not end with its command
	return cmd
}

// side is what one side of the relay said when it failed, or nil.
func side(where string, err error, stderr *tail) error {
	if err == nil {
		return nil
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		return fmt.Errorf("%s: %s (%w)", where, msg, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// tail keeps the last 16 KiB written to it: what a side says when it
// fails, without holding whatever it may print at length.
type tail struct{ b []byte }

const tailMax = 16 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = append(t.b[:0], t.b[len(t.b)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tail) String() string { return string(bytes.ToValidUTF8(t.b, []byte("?"))) }
