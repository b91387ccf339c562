package supervise

import (
	"fmt"
	"os"
	"sync"

	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// LogMax is the size a VM's console log and supervisor log never grow
// past: when the next write would take one past it, the file is renamed NAME.1
// (replacing the one before) and a new one begun. A guest that prints
// forever, or a VMM that logs in a loop, takes at most twice this of
// RUN_DIR, which is a tmpfs on most hosts: memory.
const LogMax = 10 << 20

// Log is a log file, in a directory root alone writes, that rotates at a
// fixed size, keeping one older file. It is safe for concurrent writers.
type Log struct {
	mu   sync.Mutex
	dir  *safedir.Dir // kept open by the caller while the log is written
	name string
	max  int64
	f    *os.File
	size int64
}

// OpenLog opens the log name in dir for appending, rotating at max bytes.
// With fresh, a log already there is kept as NAME.1 and a new one begun,
// as the console log is at each start of its VM.
func OpenLog(dir *safedir.Dir, name string, max int64, fresh bool) (*Log, error) {
	l := &Log{dir: dir, name: name, max: max}
	if fresh {
		if err := l.rotate(); err != nil {
			return nil, err
		}
		return l, nil
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := l.dir.OpenAppend(l.name, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// rotate renames the log NAME.1 and begins a new one.
func (l *Log) rotate() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	if ok, _ := l.dir.Exists(l.name); ok {
		if err := l.dir.Rename(l.name, l.name+".1", false); err != nil {
			return fmt.Errorf("rotating %s: %w", l.name, err)
		}
	}
	return l.open()
}

// Write appends p, rotating first where p would take the file past its
// size; a p larger than the size goes in pieces.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for len(p) > 0 {
		if l.f == nil || l.size+int64(len(p)) > l.max && l.size > 0 {
			if err := l.rotate(); err != nil {
				return n, err
			}
		}
		chunk := p[:min(int64(len(p)), l.max-l.size)]
		w, err := l.f.Write(chunk)
		n += w
		l.size += int64(w)
		if err != nil {
			return n, err
		}
		p = p[w:]
	}
	return n, nil
}

// Close closes the log.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
