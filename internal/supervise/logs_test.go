package supervise

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestOpenConsoleLog: the console log is read from the root-only part of
// the run directory, as a regular file, never through a symlink or a FIFO
// put in its place.
func TestOpenConsoleLog(t *testing.T) {
	testenv.NeedRoot(t)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("root's\n"), 0o600)
	for _, tt := range []struct {
		name string
		make func(log string)
		ok   bool
	}{
		{"the supervisor's log", func(log string) { os.WriteFile(log, []byte("boot\n"), 0o600) }, true},
		{"a symlink to root's file", func(log string) { os.Symlink(secret, log) }, false},
		{"a FIFO", func(log string) { unix.Mkfifo(log, 0o666) }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vm := &config.VM{Name: "vm1", RunDir: t.TempDir()}
			tt.make(vm.ConsoleLog())
			f, err := OpenConsoleLog(vm)
			if f != nil {
				f.Close()
			}
			if (err == nil) != tt.ok {
				t.Errorf("OpenConsoleLog: %v; want ok = %v", err, tt.ok)
			}
		})
	}
}

// TestLogRotates: a log written far past its size never holds more than
// it, keeps the newest writes in NAME and the ones before in NAME.1, and
// begun fresh keeps the last one as NAME.1.
func TestLogRotates(t *testing.T) {
	testenv.NeedRoot(t) // safedir's private directories are root's
	dir := t.TempDir()
	d, err := safedir.OpenPrivate(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const max = 1000
	l, err := OpenLog(d, "console.log", max, true)
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for i := range 500 {
		line := fmt.Sprintf("line %d\n", i)
		all.WriteString(line)
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	// One write larger than the log: it goes in pieces.
	big := strings.Repeat("x", 2500)
	all.WriteString(big)
	l.Write([]byte(big))
	l.Write([]byte("last\n"))
	all.WriteString("last\n")
	l.Close()
	cur, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	old, _ := os.ReadFile(filepath.Join(dir, "console.log.1"))
	if len(cur) > max || len(old) > max {
		t.Errorf("sizes %d and %d, over %d", len(cur), len(old), max)
	}
	if got := string(old) + string(cur); !strings.HasSuffix(all.String(), got) {
		t.Errorf("the two files, %q, are not the end of what was written", got)
	}
	if !strings.HasSuffix(string(cur), "last\n") {
		t.Errorf("the log ends %q", cur)
	}
	// Appending goes on where it was; a fresh start keeps it as .1.
	l, _ = OpenLog(d, "console.log", max, false)
	l.Write([]byte("again\n"))
	l.Close()
	l, _ = OpenLog(d, "console.log", max, true)
	l.Close()
	old, _ = os.ReadFile(filepath.Join(dir, "console.log.1"))
	cur, _ = os.ReadFile(filepath.Join(dir, "console.log"))
	if !strings.HasSuffix(string(old), "last\nagain\n") || len(cur) != 0 {
		t.Errorf("after a fresh start: .1 ends %q, the log has %q", old, cur)
	}
	if fi, err := os.Stat(filepath.Join(dir, "console.log")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the log's mode: %v, %v; want 0600", fi.Mode(), err)
	}
}

func TestTail(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 3, "a\nb\nc"},
		{"a\nb\nc\n", 9, "a\nb\nc"},
		{"a\nb\n\n", 1, ""},
		{"a\nb\n\n", 2, "b\n"},
		{"a\n", 0, ""},
	} {
		if got := Tail([]byte(tt.in), tt.n); got != tt.want {
			t.Errorf("Tail(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

// TestTailFile reads only the end of a long log, and gives what Tail gives.
func TestTailFile(t *testing.T) {
	var b strings.Builder
	for i := range 100000 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte(b.String()), 0o644)
	for _, n := range []int{0, 1, 5, 20000, 200000} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := TailFile(f, n)
		if want := Tail([]byte(b.String()), n); err != nil || got != want {
			t.Errorf("TailFile(%d): %d bytes, %v; want %d bytes", n, len(got), err, len(want))
		}
		if pos, _ := f.Seek(0, io.SeekCurrent); pos != int64(b.Len()) {
			t.Errorf("TailFile(%d) left the file at %d, want its end %d", n, pos, b.Len())
		}
		f.Close()
	}
}
