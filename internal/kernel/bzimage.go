package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/therootcompany/xz"
)

// Offsets in the x86 boot protocol header
// (https://docs.kernel.org/arch/x86/boot.html).
const (
	offSetupSects    = 0x1f1 // number of 512-byte setup sectors after the boot sector
	offMagic         = 0x202 // "HdrS"
	offVersion       = 0x206 // boot protocol version
	offPayloadOffset = 0x248 // payload offset from the end of the setup code
	offPayloadLength = 0x24c
	headerEnd        = 0x250
)

// ExtractVmlinux returns the uncompressed kernel (the vmlinux ELF) inside an
// x86 bzImage such as /boot/vmlinuz-VERSION. It reads payloads compressed
// with gzip, xz, zstd or LZ4 (Debian's); the kernel's other choices,
// bzip2, LZMA and LZO, are reported as unknown.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	payload, err := bzPayload(bzImage)
	if err != nil {
		return nil, fmt.Errorf("reading bzImage header: %w", err)
	}
	// The kernel's build reads the payload's last 4 bytes as the size of
	// vmlinux (arch/x86/boot/compressed/mkpiggy.c): gzip's own trailer
	// ends with it, and for every other format the build appends it.
	if len(payload) < 4 {
		return nil, errors.New("reading bzImage payload: shorter than its size trailer")
	}
	size := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	f := detect(payload)
	if f == nil {
		return nil, fmt.Errorf("reading bzImage payload: unknown compression (magic % x)", payload[:4])
	}
	if f.name != "gzip" {
		payload = payload[:len(payload)-4]
	}
	vmlinux, err := f.decode(payload)
	if err != nil {
		return nil, fmt.Errorf("decompressing %s payload: %w", f.name, err)
	}
	if uint32(len(vmlinux)) != size {
		return nil, fmt.Errorf("decompressing %s payload: got %d bytes, its size trailer says %d", f.name, len(vmlinux), size)
	}
	if _, err := elf.NewFile(bytes.NewReader(vmlinux)); err != nil {
		return nil, fmt.Errorf("checking vmlinux: %w", err)
	}
	return vmlinux, nil
}

// bzPayload returns the compressed kernel that the boot header points to.
func bzPayload(b []byte) ([]byte, error) {
	if len(b) < headerEnd || string(b[offMagic:offMagic+4]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS magic)")
	}
	// payload_offset and payload_length appeared in boot protocol 2.08.
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %d.%02d is older than 2.08", v>>8, v&0xff)
	}
	setupSects := int(b[offSetupSects])
	if setupSects == 0 { // the boot protocol's way of saying 4
		setupSects = 4
	}
	start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(b[offPayloadOffset:]))
	end := start + int(binary.LittleEndian.Uint32(b[offPayloadLength:]))
	if end > len(b) || start >= end {
		return nil, fmt.Errorf("payload [%d, %d) is outside the %d-byte file", start, end, len(b))
	}
	return b[start:end], nil
}

// format is a compression format the kernel build or kmod may use.
type format struct {
	name   string
	magic  string
	decode func([]byte) ([]byte, error)
}

var formats = []format{
	{"gzip", "\x1f\x8b", func(b []byte) ([]byte, error) {
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r.Multistream(false) // what follows the first member is not gzip
		return io.ReadAll(r)
	}},
	// xz with the x86 BCJ filter, as the kernel build uses it: the xz
	// package used here is a port of the kernel's own xz decoder.
	{"xz", "\xfd7zXZ\x00", func(b []byte) ([]byte, error) {
		r, err := xz.NewReader(bytes.NewReader(b), 0)
		if err != nil {
			return nil, err
		}
		return io.ReadAll(r)
	}},
	{"zstd", "\x28\xb5\x2f\xfd", func(b []byte) ([]byte, error) {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(b, nil)
	}},
	// LZ4's legacy frame, which lz4.Reader recognises by its magic.
	{"lz4", "\x02\x21\x4c\x18", func(b []byte) ([]byte, error) {
		return io.ReadAll(lz4.NewReader(bytes.NewReader(b)))
	}},
}

// detect returns the format whose magic b starts with, or nil.
func detect(b []byte) *format {
	for i := range formats {
		if bytes.HasPrefix(b, []byte(formats[i].magic)) {
			return &formats[i]
		}
	}
	return nil
}
