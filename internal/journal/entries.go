package journal

import (
	"encoding/binary"
	"fmt"
)

// Pos is how far a file's entries were read: the entry array and the item
// in it where the next entry will be, and how many entries were read.
// The zero Pos is the file's first entry.
type Pos struct {
	array, index, read uint64
}

// Read calls fn with each entry after p, in the file's order, and moves p
// past them. It stops at the entries the header does not count yet (a
// file being written), and at the first entry that cannot be read.
func (f *File) Read(p *Pos, fn func(Entry)) error {
	itemSize := uint64(8)
	if f.compact {
		itemSize = 4
	}
	if p.array == 0 {
		if f.entryArray == 0 {
			return nil // no entry yet
		}
		p.array = f.entryArray
	}
	visited := map[uint64]bool{}
	for p.read < f.nEntries && p.read < MaxEntries {
		if visited[p.array] {
			return fmt.Errorf("%w: the entry arrays loop at %d", ErrFormat, p.array)
		}
		visited[p.array] = true
		b, _, err := f.object(p.array, objEntryArray, uint64(f.size))
		if err != nil {
			return err
		}
		if len(b) < 24 {
			return fmt.Errorf("%w: entry array at %d is too short", ErrFormat, p.array)
		}
		items := uint64(len(b)-24) / itemSize
		for ; p.index < items && p.read < f.nEntries && p.read < MaxEntries; p.index++ {
			at := 24 + p.index*itemSize
			var off uint64
			if f.compact {
				off = uint64(binary.LittleEndian.Uint32(b[at:]))
			} else {
				off = binary.LittleEndian.Uint64(b[at:])
			}
			if off == 0 {
				return nil // not written yet
			}
			e, err := f.entryAt(off, f.SeqnumID)
			if err != nil {
				return err
			}
			p.read++
			fn(e)
		}
		next := binary.LittleEndian.Uint64(b[16:])
		if p.index < items || next == 0 {
			return nil // the next array is not linked yet
		}
		p.array, p.index = next, 0
	}
	return nil
}
