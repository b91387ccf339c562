package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// QMP is a connection to QEMU's machine protocol: one JSON object per line
// each way. QEMU greets, the client sends qmp_capabilities, then commands;
// each command gets one answer ("return" or "error"), and events ("event")
// may come in between.
//
// QEMU serves one QMP client at a time on a socket: keep connections short.
type QMP struct {
	conn  net.Conn
	r     *bufio.Reader
	Greet Greeting
}

// maxMessage bounds one message from QEMU. The answers to the commands
// sent here are a few hundred bytes; a VMM a guest broke into could send
// one endless line (a decoder without a bound read 1.8 GiB in 5 s).
const maxMessage = 1 << 20

// Greeting is what QEMU says first.
type Greeting struct {
	QMP struct {
		Version struct {
			QEMU struct {
				Major, Minor, Micro int
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
}

// Error is QMP's answer to a command that failed.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// message is any line from QEMU.
type message struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
}

// DialQMP connects to the QMP socket at path, served by the QEMU process
// pid (see vmm.Dial), and negotiates capabilities. ctx bounds the whole
// handshake.
func DialQMP(ctx context.Context, path string, pid int) (*QMP, error) {
	conn, err := vmm.Dial(ctx, path, pid)
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP: %w", err)
	}
	q, err := handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// handshake reads QEMU's greeting on conn and negotiates capabilities.
func handshake(ctx context.Context, conn net.Conn) (*QMP, error) {
	q := &QMP{conn: conn, r: bufio.NewReader(conn)}
	stop := q.deadline(ctx)
	defer stop()
	if err := q.read(&q.Greet); err != nil {
		return nil, fmt.Errorf("reading QMP greeting: %w", err)
	}
	if err := q.execute("qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return q, nil
}

// read decodes the next message, one line of JSON, into v.
func (q *QMP) read(v any) error {
	var line []byte
	for {
		chunk, err := q.r.ReadSlice('\n')
		if len(line)+len(chunk) > maxMessage {
			return fmt.Errorf("a message longer than %d bytes", maxMessage)
		}
		line = append(line, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			line = line[:0]
			continue
		}
		return json.Unmarshal(line, v)
	}
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Execute runs command with args (nil for none) and decodes its answer into
// result (nil to ignore it).
func (q *QMP) Execute(ctx context.Context, command string, args, result any) error {
	stop := q.deadline(ctx)
	defer stop()
	return q.execute(command, args, result)
}

func (q *QMP) execute(command string, args, result any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("QMP %s: %w", command, err)
	}
	for {
		var m message
		if err := q.read(&m); err != nil {
			return fmt.Errorf("QMP %s: reading answer: %w", command, err)
		}
		switch {
		case m.Error != nil:
			return fmt.Errorf("QMP %s: %w", command, m.Error)
		case m.Return != nil:
			if result == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("QMP %s: decoding answer: %w", command, err)
			}
			return nil
		}
		// An event: not the answer, read on.
	}
}

// deadline applies ctx's deadline to the connection, and makes ctx's
// cancellation interrupt a blocked read or write.
func (q *QMP) deadline(ctx context.Context) (stop func()) {
	// SetDeadline fails only on a closed connection, whose next read or
	// write says so.
	if d, ok := ctx.Deadline(); ok {
		_ = q.conn.SetDeadline(d)
	} else {
		_ = q.conn.SetDeadline(time.Time{})
	}
	unhook := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { unhook() }
}

// Status is the answer of query-status.
type Status struct {
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
	Running bool   `json:"running"`
}

// Status returns whether the guest runs.
func (q *QMP) Status(ctx context.Context) (Status, error) {
	var s Status
	err := q.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// SendKeys presses the keys (QEMU's qcodes: "ctrl", "alt", "delete") together
// and releases them, on the guest's keyboard. Without a keyboard device QEMU
// accepts the command and the keys go nowhere.
func (q *QMP) SendKeys(ctx context.Context, qcodes ...string) error {
	type key struct {
		Type string `json:"type"`
		Data string `json:"data"`
	}
	var args struct {
		Keys []key `json:"keys"`
	}
	for _, c := range qcodes {
		args.Keys = append(args.Keys, key{"qcode", c})
	}
	return q.Execute(ctx, "send-key", args, nil)
}

// Powerdown presses the guest's ACPI power button (system_powerdown).
func (q *QMP) Powerdown(ctx context.Context) error {
	return q.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit makes QEMU exit at once, without the guest's knowledge.
func (q *QMP) Quit(ctx context.Context) error {
	err := q.Execute(ctx, "quit", nil, nil)
	// QEMU may close the connection before its answer arrives.
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}
