package testenv

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"testing"
)

// Shell renders a command line one option per line, as a person would
// write it in a script, so that a golden file reads like the command.
func Shell(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			if strings.HasPrefix(a, "-") {
				b.WriteString(" \\\n  ")
			} else {
				b.WriteString(" ")
			}
		}
		if strings.ContainsAny(a, " '\"") {
			a = "'" + a + "'"
		}
		b.WriteString(a)
	}
	return b.String() + "\n"
}

// ShortDir is a temporary directory with a short path, removed when the
// test ends: unix socket paths are limited to 107 bytes, and test names
// make t.TempDir long.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mvt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RunDir names a fresh run_dir for a test that starts VMs: /run/PREFIX-
// and 6 hex digits, short enough for the VMM's socket paths. It is not
// made (the supervisor makes it, readable by the VMM user), and it is
// removed when the test ends.
func RunDir(t testing.TB, prefix string) string {
	id := make([]byte, 3)
	rand.Read(id)
	dir := "/run/" + prefix + "-" + hex.EncodeToString(id)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// SyncBuffer is a bytes.Buffer that processes and goroutines can write
// to at once, such as the output of several daemons.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ReadmeCommands returns the commands of the sh blocks of the README
// section whose heading starts with heading ("## Tutorial"), without their
// comments, in order: what a reader types.
func ReadmeCommands(readme, heading string) []string {
	start := strings.Index(readme, "\n"+heading)
	if start < 0 {
		return nil
	}
	end := strings.Index(readme[start+1:], "\n## ")
	if end < 0 {
		end = len(readme) - start - 1
	}
	var out []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(readme[start : start+1+end]))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh":
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case in:
			if i := strings.Index(line, " #"); i >= 0 {
				line = line[:i]
			}
			if line = strings.TrimSpace(line); line != "" {
				out = append(out, line)
			}
		}
	}
	return out
}

// DiskWarning begins the warning plan and apply give where state_dir's
// filesystem has no project quotas, so that the VMs' disk limits cannot be
// enforced with storage = "dir" (package storage): on the machines the
// tests run on, whose kernel has no quota format for ext4. The tests of
// that warning are in package storage.
const DiskWarning = "warning: the VMs' disk limits ("

// WithoutDiskWarning is a plan's or an apply's output without DiskWarning,
// for tests that compare the rest.
func WithoutDiskWarning(out string) string {
	var keep []string
	for _, line := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(line, DiskWarning) {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "")
}
