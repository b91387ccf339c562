package supervise

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// OpenSupervisorLog opens vm's supervisor log, from the part of its run
// directory that only root writes.
func OpenSupervisorLog(vm *config.VM) (*os.File, error) {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Open(filepath.Base(vm.SupervisorLog()))
}

// OpenConsoleLog opens vm's console log, which its supervisor writes
// (package runner) in the part of the run directory only root writes: the
// VMM only writes into a pipe, and has nothing to put in its place.
func OpenConsoleLog(vm *config.VM) (*os.File, error) {
	d, err := safedir.OpenPrivate(vm.RunDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Open(filepath.Base(vm.ConsoleLog()))
}

// TailOf is the last n lines of vm's log that open opens
// (OpenSupervisorLog, OpenConsoleLog), or why it cannot be read: for a
// message.
func TailOf(open func(*config.VM) (*os.File, error), vm *config.VM, n int) string {
	f, err := open(vm)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	s, err := TailFile(f, n)
	if err != nil {
		return err.Error()
	}
	return s
}

// maxTail bounds how far back TailFile reads: the guest writes the console
// log (which rotates at LogMax, but a log may be any file).
const maxTail = 4 << 20

// TailFile returns the last n lines of f, as Tail does, reading back from
// its end only as far as they go (at most maxTail bytes). It leaves f at
// its end, for a caller that follows it.
func TailFile(f *os.File, n int) (string, error) {
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", err
	}
	for size := int64(64 << 10); ; size *= 2 {
		size = min(size, end, maxTail)
		b := make([]byte, size)
		if _, err := f.ReadAt(b, end-size); err != nil && err != io.EOF {
			return "", err
		}
		// More than n newlines: the last n lines are whole.
		if size == end || size == maxTail || bytes.Count(b, []byte{'\n'}) > n {
			return Tail(b, n), nil
		}
	}
}

// Tail returns the last n lines of a log (all of it if it has fewer),
// without the final newline; blank lines count.
func Tail(b []byte, n int) string {
	if n <= 0 {
		return ""
	}
	s := strings.TrimSuffix(string(b), "\n")
	i := len(s)
	for ; n > 0 && i >= 0; n-- {
		i = strings.LastIndexByte(s[:i], '\n')
	}
	return s[i+1:]
}
