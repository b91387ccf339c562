package kernel

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

type cpioEntry struct {
	name                 string
	mode                 uint32
	rdevMajor, rdevMinor uint32
	data                 []byte
}

// readCpio reads a newc archive the way the kernel does, checking the
// magic and the 4-byte alignment of every name and body.
func readCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	align := func(n int) int { return (n + 3) &^ 3 }
	var entries []cpioEntry
	for off := 0; ; {
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at offset %d: %v", i, off, err)
			}
			return int(v)
		}
		mode, size, rdevMajor, rdevMinor, namesize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		if b[off+110+namesize-1] != 0 {
			t.Fatalf("name %q at offset %d has no NUL", name, off)
		}
		body := align(off + 110 + namesize)
		off = align(body + size)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return entries
		}
		entries = append(entries, cpioEntry{name, uint32(mode), uint32(rdevMajor), uint32(rdevMinor), b[body : body+size]})
	}
}

// listing renders entries like ls -l: mode in octal, device or size, name.
func listing(entries []cpioEntry) string {
	var s strings.Builder
	for _, e := range entries {
		size := strconv.Itoa(len(e.data))
		if e.mode&0o170000 == typeChar {
			size = fmt.Sprintf("%d,%d", e.rdevMajor, e.rdevMinor)
		}
		fmt.Fprintf(&s, "%06o %6s %s\n", e.mode, size, e.name)
	}
	return s.String()
}

// testModuleFiles writes a module in each form the initramfs takes, and
// returns their paths in load order and the ELF each holds.
func testModuleFiles(t *testing.T) (paths []string, elfFile []byte) {
	dir := t.TempDir()
	elfFile = testELF(nil, nil)
	files := []struct {
		name string
		data []byte
	}{
		{"virtio_ring.ko", elfFile},
		{"virtio.ko.zst", zstdCompressed(elfFile)},
		{"virtio-rng.ko.gz", gzipped(elfFile)},
		{"fuse.ko.xz", xzKernel(t)}, // testELF(pvhNote, nil)
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths, elfFile
}

func TestWriteInitramfs(t *testing.T) {
	modules, elfFile := testModuleFiles(t)
	initProgram := []byte("\x7fELF pretend init")
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, initProgram, modules); err != nil {
		t.Fatalf("WriteInitramfs: %v", err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatalf("initramfs is not gzip: %v", err)
	}
	archive, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("initramfs is not gzip: %v", err)
	}
	entries := readCpio(t, archive)

	// The layout, compared with testdata/initramfs.golden.
	got := listing(entries)
	const golden = "testdata/initramfs.golden"
	if testenv.Update() {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("initramfs layout =\n%s\nwant (%s)\n%s", got, golden, want)
	}

	// The contents: init as given, modules decompressed, and the order.
	files := map[string][]byte{}
	for _, e := range entries {
		files[e.name] = e.data
	}
	wantFiles := map[string][]byte{
		"init":                       initProgram,
		"lib/modules/virtio_ring.ko": elfFile,
		"lib/modules/virtio.ko":      elfFile,
		"lib/modules/virtio-rng.ko":  elfFile,
		"lib/modules/fuse.ko":        testELF(pvhNote, nil),
		"lib/modules/load.order":     []byte("virtio_ring.ko\nvirtio.ko\nvirtio-rng.ko\nfuse.ko\n"),
	}
	for name, want := range wantFiles {
		if got := files[name]; !bytes.Equal(got, want) {
			t.Errorf("%s holds %q, want %q", name, got, want)
		}
	}
}

func TestWriteInitramfsIsDeterministic(t *testing.T) {
	modules, _ := testModuleFiles(t)
	var a, b bytes.Buffer
	if err := WriteInitramfs(&a, []byte("init"), modules); err != nil {
		t.Fatal(err)
	}
	// Other time stamps on the files must not change the archive.
	for _, p := range modules {
		os.Chtimes(p, time.Unix(1e9, 0), time.Unix(1e9, 0))
	}
	if err := WriteInitramfs(&b, []byte("init"), modules); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two initramfs of the same input differ")
	}
}

func TestWriteInitramfsErrors(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "bad.ko")
	os.WriteFile(notELF, []byte("not a module"), 0o644)
	corrupt := filepath.Join(dir, "corrupt.ko.zst")
	os.WriteFile(corrupt, []byte("\x28\xb5\x2f\xfdgarbage"), 0o644)
	for _, path := range []string{notELF, corrupt, filepath.Join(dir, "missing.ko")} {
		if err := WriteInitramfs(io.Discard, nil, []string{path}); err == nil {
			t.Errorf("WriteInitramfs with %s: got no error", filepath.Base(path))
		}
	}
}
