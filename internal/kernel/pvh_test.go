package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"testing"
)

// note returns one ELF note: namesz, descsz and type, then the name with
// its NUL and the descriptor, each padded to 4 bytes.
func note(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, [3]uint32{uint32(len(name) + 1), uint32(len(desc)), typ})
	b.WriteString(name + "\x00")
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// pvhNote is the note a PVH-capable kernel has: the 32-bit entry address.
var pvhNote = note("Xen", xenElfnotePhys32Entry, []byte{0x00, 0x10, 0x00, 0x01})

// testELF returns a small x86-64 ELF file with segNotes in a PT_NOTE
// segment and secNotes in a .notes section, each only if not nil.
func testELF(segNotes, secNotes []byte) []byte {
	const ehsize, phsize, shsize = 64, 56, 64
	strtab := []byte("\x00.shstrtab\x00.notes\x00")
	phnum := 0
	if segNotes != nil {
		phnum = 1
	}
	// Layout: header, program header, segment notes, section notes, string
	// table, section headers (null, string table, notes).
	segOff := uint64(ehsize + phnum*phsize)
	secOff := segOff + uint64(len(segNotes))
	strOff := secOff + uint64(len(secNotes))
	shOff := strOff + uint64(len(strtab))
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(strtab)), Addralign: 1},
	}
	if secNotes != nil {
		sections = append(sections, elf.Section64{Name: 11, Type: uint32(elf.SHT_NOTE), Off: secOff, Size: uint64(len(secNotes)), Addralign: 4})
	}

	var b bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&b, le, elf.Header64{
		Ident:     [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Phoff:     ehsize,
		Shoff:     shOff,
		Ehsize:    ehsize,
		Phentsize: phsize,
		Phnum:     uint16(phnum),
		Shentsize: shsize,
		Shnum:     uint16(len(sections)),
		Shstrndx:  1,
	})
	if segNotes != nil {
		binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: segOff, Filesz: uint64(len(segNotes)), Memsz: uint64(len(segNotes)), Align: 4})
	}
	b.Write(segNotes)
	b.Write(secNotes)
	b.Write(strtab)
	binary.Write(&b, le, sections)
	return b.Bytes()
}

func TestHasPVH(t *testing.T) {
	buildID := note("GNU", 3, []byte("0123456789abcdef0123"))
	otherXen := note("Xen", 17, []byte{1, 2, 3, 4}) // XEN_ELFNOTE_FEATURES... anything but 18
	tests := []struct {
		name string
		elf  []byte
		want bool
	}{
		{"segment", testELF(pvhNote, nil), true},
		{"section only", testELF(nil, pvhNote), true},
		{"after other notes", testELF(append(append(buildID, otherXen...), pvhNote...), nil), true},
		{"other Xen notes", testELF(otherXen, otherXen), false},
		{"type 18 of GNU", testELF(note("GNU", xenElfnotePhys32Entry, nil), nil), false},
		{"name is a prefix", testELF(note("Xenon", xenElfnotePhys32Entry, nil), nil), false},
		{"no notes", testELF(nil, nil), false},
		{"truncated note", testELF(pvhNote[:14], nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := HasPVH(tt.elf)
			if err != nil {
				t.Fatalf("HasPVH: %v", err)
			}
			if got != tt.want {
				t.Errorf("HasPVH = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHasPVHNotELF(t *testing.T) {
	if _, err := HasPVH([]byte("MZ not an ELF file")); err == nil {
		t.Error("HasPVH of a non-ELF file: got no error")
	}
}
