package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
)

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note, owned by
// "Xen", that holds the kernel's 32-bit PVH entry point. Cloud Hypervisor
// and QEMU start an ELF kernel there.
const xenElfnotePhys32Entry = 18

// HasPVH reports whether vmlinux, an ELF kernel, has a PVH entry point.
func HasPVH(vmlinux []byte) (bool, error) {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return false, fmt.Errorf("reading vmlinux: %w", err)
	}
	// Notes are in PT_NOTE segments and SHT_NOTE sections; a stripped
	// ELF may have only the segments.
	var notes []io.ReadSeeker
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			notes = append(notes, p.Open())
		}
	}
	for _, s := range f.Sections {
		if s.Type == elf.SHT_NOTE {
			notes = append(notes, s.Open())
		}
	}
	for _, r := range notes {
		b, err := io.ReadAll(r)
		if err != nil {
			return false, fmt.Errorf("reading ELF notes: %w", err)
		}
		if hasNote(b, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true, nil
		}
	}
	return false, nil
}

// hasNote reports whether b, the contents of a note segment or section,
// holds a note of type typ owned by name. Each note is namesz, descsz and
// type (4 bytes each), then the name and the descriptor, each padded to 4.
func hasNote(b []byte, order binary.ByteOrder, name string, typ uint32) bool {
	pad := func(n uint32) int { return int((uint64(n) + 3) &^ 3) }
	for len(b) >= 12 {
		namesz, descsz, t := order.Uint32(b), order.Uint32(b[4:]), order.Uint32(b[8:])
		b = b[12:]
		if pad(namesz) > len(b) {
			return false
		}
		// The name is NUL-terminated and namesz counts the NUL.
		if t == typ && string(bytes.TrimRight(b[:namesz], "\x00")) == name {
			return true
		}
		b = b[pad(namesz):]
		if pad(descsz) > len(b) {
			return false
		}
		b = b[pad(descsz):]
	}
	return false
}
