package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/testenv"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// testBzImage returns a bzImage around payload: just the header fields
// ExtractVmlinux reads, with bytes before and after the payload as a real
// bzImage has.
func testBzImage(payload []byte) []byte {
	const setupSects, payloadOffset = 1, 16
	start := (setupSects+1)*512 + payloadOffset
	b := bytes.Repeat([]byte{0xff}, start+len(payload)+64)
	b[offSetupSects] = setupSects
	copy(b[offMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[offVersion:], 0x20f)
	binary.LittleEndian.PutUint32(b[offPayloadOffset:], payloadOffset)
	binary.LittleEndian.PutUint32(b[offPayloadLength:], uint32(len(payload)))
	copy(b[start:], payload)
	return b
}

// withSize appends the uncompressed size, as the kernel build does for
// every format but gzip.
func withSize(compressed []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(bytes.Clone(compressed), uint32(size))
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstdCompressed(b []byte) []byte {
	enc, _ := zstd.NewWriter(nil)
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

func lz4Legacy(b []byte) []byte {
	var buf bytes.Buffer
	w := lz4.NewWriter(&buf)
	w.Apply(lz4.LegacyOption(true))
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// xzKernel returns testdata/vmlinux.xz: testELF(pvhNote, nil) compressed
// as the kernel build compresses (scripts/xz_wrap.sh), with the x86 BCJ
// filter that not every Go xz package can decode. -update remakes it with
// the xz command.
func xzKernel(t *testing.T) []byte {
	t.Helper()
	const file = "testdata/vmlinux.xz"
	if testenv.Update() {
		cmd := exec.Command("xz", "--format=xz", "--check=crc32", "--x86", "--lzma2=dict=32MiB", "--stdout")
		cmd.Stdin = bytes.NewReader(testELF(pvhNote, nil))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz: %v", err)
		}
		if err := os.WriteFile(file, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExtractVmlinux(t *testing.T) {
	vmlinux := testELF(pvhNote, nil)
	tests := []struct {
		name    string
		payload []byte
	}{
		{"gzip", gzipped(vmlinux)}, // gzip's own trailer ends with the size
		{"xz with x86 BCJ", withSize(xzKernel(t), len(vmlinux))},
		{"zstd", withSize(zstdCompressed(vmlinux), len(vmlinux))},
		{"lz4 legacy", withSize(lz4Legacy(vmlinux), len(vmlinux))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if f := detect(tt.payload); f == nil || !strings.HasPrefix(tt.name, f.name) {
				t.Fatalf("the test's payload is not detected as %s", tt.name)
			}
			got, err := ExtractVmlinux(testBzImage(tt.payload))
			if err != nil {
				t.Fatalf("ExtractVmlinux: %v", err)
			}
			if !bytes.Equal(got, vmlinux) {
				t.Errorf("ExtractVmlinux returned %d bytes, not the %d-byte ELF compressed", len(got), len(vmlinux))
			}
		})
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	vmlinux := testELF(pvhNote, nil)
	good := testBzImage(withSize(zstdCompressed(vmlinux), len(vmlinux)))
	// edit returns a copy of good with its header changed by f.
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	tests := []struct {
		name    string
		bzImage []byte
		want    string // in the error
	}{
		{"empty", nil, "no HdrS"},
		{"no magic", edit(func(b []byte) { copy(b[offMagic:], "HdrX") }), "no HdrS"},
		{"protocol 2.06", edit(func(b []byte) { binary.LittleEndian.PutUint16(b[offVersion:], 0x206) }), "2.06 is older"},
		{"payload past the end", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[offPayloadLength:], 1<<20) }), "outside"},
		{"empty payload", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[offPayloadLength:], 0) }), "outside"},
		{"unknown compression", testBzImage(withSize([]byte("BZh91AY&SY"), 10)), "unknown compression"},
		{"corrupt", testBzImage(withSize([]byte("\x02\x21\x4c\x18\x10\x00\x00\x00garbage garbage!"), 10)), "decompressing lz4"},
		{"wrong size", testBzImage(withSize(zstdCompressed(vmlinux), len(vmlinux)+1)), "trailer says"},
		{"not an ELF", testBzImage(withSize(zstdCompressed([]byte("hello")), 5)), "checking vmlinux"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ExtractVmlinux(tt.bzImage)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ExtractVmlinux error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
