// Package journal reads systemd journal files that a guest wrote: the
// journal each VM keeps in its /var (package guest), which `microvm logs
// NAME --guest` prints from the host. The files are the guest's, so they
// are read as hostile input: opened through package safedir (no symlink
// followed, nothing but regular files), never mapped into memory (a guest
// that truncates a file would make a mapping fault), read through a small
// cache of bounded size, and every offset, size, count and decompressed
// length is checked against a limit before it is used. A file that breaks
// a rule is reported and skipped; one being written meanwhile yields the
// entries that were whole when they were read.
//
// The format is systemd's (https://systemd.io/JOURNAL_FILE_FORMAT/): a
// header, then objects; entries are found through the chain of entry
// arrays the header starts, each entry lists the data objects of its
// fields ("FIELD=value"), which may be compressed (XZ, LZ4, Zstandard).
// Files in compact mode (systemd 252 and later write them) have 32-bit
// offsets in entries and entry arrays.
package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/therootcompany/xz"
)

// Limits on what is read of a file.
const (
	MaxFileSize   = 1 << 30 // larger files are refused (journald's own cap is far below)
	MaxFieldSize  = 1 << 20 // a field's payload, decompressed; larger ones are left out
	MaxFields     = 1024    // fields of one entry (journald's own limit)
	MaxEntries    = 4 << 20 // entries read from one file
	pageSize      = 64 << 10
	maxCachePages = 128 // 8 MiB of cache per file
)

// Header flags (incompatible_flags): a file with any other is refused.
const (
	flagXZ        = 1 << 0
	flagLZ4       = 1 << 1
	flagKeyedHash = 1 << 2
	flagZSTD      = 1 << 3
	flagCompact   = 1 << 4
	knownFlags    = flagXZ | flagLZ4 | flagKeyedHash | flagZSTD | flagCompact
)

// Object types and compression flags.
const (
	objData       = 1
	objEntry      = 3
	objEntryArray = 6

	compressedXZ   = 1 << 0
	compressedLZ4  = 1 << 1
	compressedZSTD = 1 << 2
)

// ErrFormat is wrapped by every error about what a file holds.
var ErrFormat = errors.New("not a journal file this program reads")

// File is one open journal file.
type File struct {
	r       io.ReaderAt
	size    int64
	compact bool
	ID      [16]byte // the file's ID, which stays while journald writes it
	// SeqnumID names the sequence its entries' numbers are of: entries of
	// one journald share it, across the files it writes.
	SeqnumID [16]byte
	// nEntries and entryArray are from the header, read again by Refresh.
	nEntries   uint64
	entryArray uint64
	headerSize uint64
	pages      map[int64][]byte
	data       map[uint64]field // data objects read, by offset: the same field is in many entries
}

// field is one data object's payload, split.
type field struct {
	name, value string
	ok          bool
}

// Open reads the header of the journal file r of size bytes.
func Open(r io.ReaderAt, size int64) (*File, error) {
	if size > MaxFileSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrFormat, size, MaxFileSize)
	}
	f := &File{r: r, size: size}
	if err := f.Refresh(size); err != nil {
		return nil, err
	}
	return f, nil
}

// OpenFile opens the journal file f (opened by the caller, through
// safedir).
func OpenFile(f *os.File) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return Open(f, fi.Size())
}

// Refresh reads the header again, for entries written since, with the
// file's size now.
func (f *File) Refresh(size int64) error {
	if size > MaxFileSize {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrFormat, size, MaxFileSize)
	}
	f.size, f.pages = size, nil
	h := make([]byte, 208)
	if _, err := f.r.ReadAt(h, 0); err != nil {
		return fmt.Errorf("%w: reading the header: %v", ErrFormat, err)
	}
	if !bytes.Equal(h[:8], []byte("LPKSHHRH")) {
		return fmt.Errorf("%w: no journal signature", ErrFormat)
	}
	incompat := binary.LittleEndian.Uint32(h[12:])
	if incompat&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown incompatible flags %#x", ErrFormat, incompat)
	}
	f.compact = incompat&flagCompact != 0
	copy(f.ID[:], h[24:40])
	copy(f.SeqnumID[:], h[72:88])
	f.headerSize = binary.LittleEndian.Uint64(h[88:])
	f.nEntries = binary.LittleEndian.Uint64(h[152:])
	f.entryArray = binary.LittleEndian.Uint64(h[176:])
	if f.headerSize < 208 || f.headerSize > uint64(size) {
		return fmt.Errorf("%w: header size %d", ErrFormat, f.headerSize)
	}
	if f.data == nil {
		f.data = map[uint64]field{}
	}
	return nil
}

// read returns n bytes at off, through the page cache.
func (f *File) read(off, n uint64) ([]byte, error) {
	if n == 0 || off < f.headerSize || off+n < off || off+n > uint64(f.size) {
		return nil, fmt.Errorf("%w: %d bytes at %d are outside the file", ErrFormat, n, off)
	}
	out := make([]byte, 0, n)
	for n > 0 {
		page := int64(off / pageSize)
		p, ok := f.pages[page]
		if !ok {
			if len(f.pages) >= maxCachePages {
				f.pages = nil
			}
			if f.pages == nil {
				f.pages = map[int64][]byte{}
			}
			p = make([]byte, pageSize)
			k, err := f.r.ReadAt(p, page*pageSize)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			p = p[:k]
			f.pages[page] = p
		}
		in := off % pageSize
		if in >= uint64(len(p)) {
			return nil, fmt.Errorf("%w: the file ends before %d", ErrFormat, off)
		}
		k := min(n, uint64(len(p))-in)
		out = append(out, p[in:in+k]...)
		off, n = off+k, n-k
	}
	return out, nil
}

// object reads the header of the object at off, checks its type, and
// returns its whole body (header included), at most max bytes.
func (f *File) object(off uint64, typ byte, max uint64) ([]byte, byte, error) {
	if off%8 != 0 {
		return nil, 0, fmt.Errorf("%w: object at unaligned offset %d", ErrFormat, off)
	}
	h, err := f.read(off, 16)
	if err != nil {
		return nil, 0, err
	}
	size := binary.LittleEndian.Uint64(h[8:])
	if h[0] != typ {
		return nil, 0, fmt.Errorf("%w: object at %d is of type %d, not %d", ErrFormat, off, h[0], typ)
	}
	if size < 16 || size > max {
		return nil, 0, fmt.Errorf("%w: object at %d has size %d", ErrFormat, off, size)
	}
	b, err := f.read(off, size)
	return b, h[1], err
}

// Entry is one entry of the journal.
type Entry struct {
	Realtime time.Time
	Seqnum   uint64
	SeqnumID [16]byte // with Seqnum, names the entry in every file that holds it
	BootID   [16]byte
	Fields   map[string]string
}

// Field returns a field's value, "" if the entry has none.
func (e *Entry) Field(name string) string { return e.Fields[name] }

// entryAt reads the entry at off.
func (f *File) entryAt(off uint64, seqnumID [16]byte) (Entry, error) {
	itemSize := uint64(16)
	if f.compact {
		itemSize = 4
	}
	b, _, err := f.object(off, objEntry, 64+MaxFields*itemSize)
	if err != nil {
		return Entry{}, err
	}
	if len(b) < 64 {
		return Entry{}, fmt.Errorf("%w: entry at %d is too short", ErrFormat, off)
	}
	e := Entry{Seqnum: binary.LittleEndian.Uint64(b[16:]), SeqnumID: seqnumID, Fields: map[string]string{}}
	e.Realtime = time.UnixMicro(int64(binary.LittleEndian.Uint64(b[24:])))
	copy(e.BootID[:], b[40:56])
	items := b[64:]
	for len(items) >= int(itemSize) {
		var d uint64
		if f.compact {
			d = uint64(binary.LittleEndian.Uint32(items))
		} else {
			d = binary.LittleEndian.Uint64(items)
		}
		items = items[itemSize:]
		fl, ok := f.data[d]
		if !ok {
			fl = f.dataAt(d)
			f.data[d] = fl
			if len(f.data) > 1<<20 { // bounded: forget, read again when needed
				f.data = map[uint64]field{}
			}
		}
		if fl.ok {
			e.Fields[fl.name] = fl.value
		}
	}
	return e, nil
}

// dataAt reads the data object at off: one field. One that cannot be read
// is left out of its entry.
func (f *File) dataAt(off uint64) field {
	start := uint64(64)
	if f.compact {
		start = 72
	}
	b, flags, err := f.object(off, objData, start+MaxFieldSize)
	if err != nil || uint64(len(b)) < start {
		return field{}
	}
	payload, err := decompress(b[start:], flags)
	if err != nil {
		return field{}
	}
	name, value, ok := bytes.Cut(payload, []byte("="))
	if !ok || len(name) == 0 {
		return field{}
	}
	return field{name: string(name), value: string(value), ok: true}
}

// decompress returns a data object's payload as written, at most
// MaxFieldSize bytes.
func decompress(p []byte, flags byte) ([]byte, error) {
	switch {
	case flags&compressedZSTD != 0:
		d, err := zstd.NewReader(bytes.NewReader(p), zstd.WithDecoderMaxMemory(MaxFieldSize*2), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return limited(d)
	case flags&compressedXZ != 0:
		d, err := xz.NewReader(bytes.NewReader(p), 1<<24)
		if err != nil {
			return nil, err
		}
		return limited(d)
	case flags&compressedLZ4 != 0:
		// systemd's: the size, then one LZ4 block.
		if len(p) < 8 {
			return nil, fmt.Errorf("%w: short LZ4 payload", ErrFormat)
		}
		n := binary.LittleEndian.Uint64(p)
		if n > MaxFieldSize {
			return nil, fmt.Errorf("%w: field of %d bytes", ErrFormat, n)
		}
		out := make([]byte, n)
		k, err := lz4.UncompressBlock(p[8:], out)
		if err != nil {
			return nil, err
		}
		return out[:k], nil
	case flags != 0:
		return nil, fmt.Errorf("%w: unknown compression %#x", ErrFormat, flags)
	}
	return p, nil
}

// limited reads r up to MaxFieldSize bytes, and fails past it.
func limited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxFieldSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFieldSize {
		return nil, fmt.Errorf("%w: a field over %d bytes", ErrFormat, MaxFieldSize)
	}
	return b, nil
}
