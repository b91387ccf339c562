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
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestOpenConsoleLog: root reads a VM's console log only if it is what
// the VMM made, a regular file of the VM's user with one link; not what a
// VMM's user can put in its place.
func TestOpenConsoleLog(t *testing.T) {
	testenv.NeedRoot(t)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("root's\n"), 0o600)
	for _, tt := range []struct {
		name string
		make func(log string)
		ok   bool
	}{
		{"the VMM's log", func(log string) { os.WriteFile(log, []byte("boot\n"), 0o644); os.Chown(log, 65534, 65534) }, true},
		{"a symlink to root's file", func(log string) { os.Symlink(secret, log) }, false},
		{"a hard link to root's file", func(log string) { os.Link(secret, log) }, false},
		{"a hard link to its own file", func(log string) {
			os.WriteFile(log+".x", nil, 0o644)
			os.Chown(log+".x", 65534, 65534)
			os.Link(log+".x", log)
		}, false},
		{"a FIFO", func(log string) { unix.Mkfifo(log, 0o666); os.Chown(log, 65534, 65534) }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vm := &config.VM{Name: "vm1", User: "nobody", RunDir: t.TempDir()}
			os.MkdirAll(vm.VMMDir(), 0o700)
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
