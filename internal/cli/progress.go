package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress shows a long job by its phases. Package image writes each phase
// as a line "==> PHASE" among its tools' output (debootstrap's hundreds of
// lines); progress writes everything to the log and shows only the phases,
// with the time since the start: on a terminal as one line redrawn every
// second that also carries the tool's latest line, elsewhere as one plain
// line per phase.
type progress struct {
	out, log io.Writer
	tty      bool
	width    int
	start    time.Time

	mu    sync.Mutex
	buf   []byte
	phase string // the phase shown on the terminal line
	last  string // the tool's latest line
	stop  chan struct{}
	done  chan struct{}
}

func newProgress(out, log io.Writer) *progress {
	p := &progress{out: out, log: log, start: time.Now(), width: 80}
	if f, ok := out.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty = true
			if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 20 {
				p.width = int(ws.Col)
			}
		}
	}
	if p.tty {
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.tick()
	}
	return p
}

func (p *progress) Write(b []byte) (int, error) {
	// The log is a copy for later: a full disk must not stop the build,
	// whose own output goes on below.
	_, _ = p.log.Write(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		line := strings.TrimRight(string(p.buf[:i]), "\r")
		p.buf = p.buf[i+1:]
		if phase, ok := strings.CutPrefix(line, "==> "); ok {
			p.newPhase(phase)
		} else if strings.TrimSpace(line) != "" {
			p.last = line
			if p.tty && p.phase != "" {
				p.draw()
			}
		}
	}
}

// newPhase ends the terminal line of the phase before, if any, and starts
// the next one. The caller holds mu.
func (p *progress) newPhase(phase string) {
	if !p.tty {
		fmt.Fprintf(p.out, "[%6s] %s\n", elapsed(p.start), phase)
		return
	}
	if p.phase != "" {
		fmt.Fprintf(p.out, "\r\033[K[%6s] %s\n", elapsed(p.start), p.phase)
	}
	p.phase, p.last = phase, ""
	p.draw()
}

// draw rewrites the terminal line. The caller holds mu.
func (p *progress) draw() {
	line := fmt.Sprintf("[%6s] %s", elapsed(p.start), p.phase)
	if p.last != "" {
		line += "  " + p.last
	}
	if r := []rune(line); len(r) > p.width-1 {
		line = string(r[:p.width-1])
	}
	fmt.Fprintf(p.out, "\r\033[K%s", line)
}

func (p *progress) tick() {
	defer close(p.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if p.phase != "" {
				p.draw()
			}
			p.mu.Unlock()
		}
	}
}

// Close ends the terminal line.
func (p *progress) Close() {
	if !p.tty {
		return
	}
	close(p.stop)
	<-p.done
	if p.phase != "" {
		fmt.Fprintf(p.out, "\r\033[K[%6s] %s\n", elapsed(p.start), p.phase)
	}
}

// elapsed is the time since start, to the second: 5s, 1m12s.
func elapsed(start time.Time) string { return time.Since(start).Round(time.Second).String() }
