package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// remote is where Debian's systemd-journal-remote is: it writes journal
// files from journald's export format, as journald itself would (the same
// systemd as the guests').
const remote = "/lib/systemd/systemd-journal-remote"

// entry is one entry to write, in export format.
type entry struct {
	t      time.Time
	fields [][2]string
}

func (e entry) export(b *bytes.Buffer) {
	fmt.Fprintf(b, "__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=0123456789abcdef0123456789abcdef\n", e.t.UnixMicro(), e.t.UnixMicro()-1_700_000_000_000_000)
	for _, f := range e.fields {
		if strings.ContainsAny(f[1], "\n\x00") || !isText(f[1]) {
			// A binary field: its name, a newline, its size, its bytes.
			b.WriteString(f[0] + "\n")
			binary.Write(b, binary.LittleEndian, uint64(len(f[1])))
			b.WriteString(f[1] + "\n")
			continue
		}
		b.WriteString(f[0] + "=" + f[1] + "\n")
	}
	b.WriteString("\n")
}

func isText(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 && c != '\t' {
			return false
		}
	}
	return true
}

// write makes a journal file at path from entries, with env's settings
// for systemd (SYSTEMD_JOURNAL_COMPACT=0 for the older layout).
func write(t *testing.T, path string, entries []entry, env ...string) {
	t.Helper()
	testenv.NeedCommands(t, remote)
	var b bytes.Buffer
	for _, e := range entries {
		e.export(&b)
	}
	src := filepath.Join(t.TempDir(), "in.export")
	os.WriteFile(src, b.Bytes(), 0o644)
	cmd := exec.Command(remote, "--output="+path, src)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", remote, err, out)
	}
}

var t0 = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

// sample is entries of every kind: two units, a multi-line message,
// terminal escapes, a message long enough to be compressed.
func sample(n int, from time.Time) []entry {
	var out []entry
	for i := range n {
		unit := []string{"nginx.service", "redis-server.service"}[i%2]
		msg := fmt.Sprintf("message %d of %s", i, unit)
		switch i % 5 {
		case 1:
			msg += "\nsecond line"
		case 2:
			msg += " \x1b[31mred\x1b[0m"
		case 3:
			msg += " " + strings.Repeat("long ", 300) // compressed (over 512 bytes)
		}
		out = append(out, entry{from.Add(time.Duration(i) * time.Second), [][2]string{
			{"MESSAGE", msg}, {"_HOSTNAME", "vm1"}, {"SYSLOG_IDENTIFIER", strings.TrimSuffix(unit, ".service")},
			{"_PID", fmt.Sprint(100 + i)}, {"_SYSTEMD_UNIT", unit},
		}})
	}
	return out
}

// readFile reads every entry of the journal file at path.
func readFile(t *testing.T, path string) []Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	jf, err := OpenFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var got []Entry
	var p Pos
	if err := jf.Read(&p, func(e Entry) { got = append(got, e) }); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestRead reads what systemd wrote, in both of its layouts, and finds
// every entry and field as written.
func TestRead(t *testing.T) {
	want := sample(40, t0)
	for _, layout := range []struct {
		name string
		env  []string
	}{{"compact", nil}, {"regular", []string{"SYSTEMD_JOURNAL_COMPACT=0"}}} {
		t.Run(layout.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "system.journal")
			write(t, path, want, layout.env...)
			got := readFile(t, path)
			if len(got) != len(want) {
				t.Fatalf("got %d entries, want %d", len(got), len(want))
			}
			for i, e := range got {
				if !e.Realtime.Equal(want[i].t) || e.Seqnum != uint64(i+1) {
					t.Errorf("entry %d: time %s, seqnum %d", i, e.Realtime, e.Seqnum)
				}
				for _, f := range want[i].fields {
					if e.Field(f[0]) != f[1] {
						t.Errorf("entry %d: %s = %q, want %q", i, f[0], e.Field(f[0]), f[1])
					}
				}
			}
		})
	}
}

// TestShort: the short format, safe for a terminal.
func TestShort(t *testing.T) {
	e := Entry{Realtime: t0, Fields: map[string]string{"_HOSTNAME": "vm1", "SYSLOG_IDENTIFIER": "app", "_PID": "7",
		"MESSAGE": "a\x1b]0;owned\x07 b\nnext\x00line\xff\n"}}
	got := Short(&e)
	want := t0.Local().Format(time.Stamp) + " vm1 app[7]: a\\x1b]0;owned\\x07 b\n" + strings.Repeat(" ", len(t0.Local().Format(time.Stamp)+" vm1 app[7]: ")) + "next\\x00line\uFFFD"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	long := Entry{Realtime: t0, Fields: map[string]string{"MESSAGE": strings.Repeat("x", maxMessage+10)}}
	if s := Short(&long); !strings.HasSuffix(s, "x…") || len(s) > maxMessage+200 {
		t.Errorf("a long message is not cut: %d bytes", len(s))
	}
}

// journalDir makes a VM's /var/log/journal/MACHINE-ID, opened through
// safedir as logs --guest opens it.
func journalDir(t *testing.T) (string, *Dir) {
	t.Helper()
	root := t.TempDir()
	mid := filepath.Join(root, "0123456789abcdef0123456789abcdef")
	os.Mkdir(mid, 0o755)
	d, err := safedir.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	jd := OpenDir(d)
	t.Cleanup(jd.Close)
	return mid, jd
}

func poll(t *testing.T, d *Dir, keep Filter) []string {
	t.Helper()
	var out []string
	if err := d.Poll(func(e Entry) {
		if keep == nil || keep(&e) {
			out = append(out, e.Field("MESSAGE"))
		}
	}); err != nil {
		t.Errorf("poll: %v", err)
	}
	return out
}

// TestDir: the files of a directory merged in time order, filtered by
// unit; then, after journald archives its file (a rename) and starts a
// new one, only the new entries; nothing through a symlink the guest
// planted.
func TestDir(t *testing.T) {
	mid, d := journalDir(t)
	first, user := sample(6, t0), sample(2, t0.Add(1500*time.Millisecond))
	user[0].fields[0][1], user[1].fields[0][1] = "user entry 0", "user entry 1"
	write(t, filepath.Join(mid, "system.journal"), first)
	write(t, filepath.Join(mid, "user-1000.journal"), user)
	os.Symlink("/etc/shadow", filepath.Join(mid, "evil.journal"))
	os.WriteFile(filepath.Join(mid, "notes.txt"), []byte("not a journal"), 0o644)

	got := poll(t, d, nil)
	want := []string{first[0].fields[0][1], first[1].fields[0][1], "user entry 0", first[2].fields[0][1], "user entry 1",
		first[3].fields[0][1], first[4].fields[0][1], first[5].fields[0][1]}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("merged:\n%q\nwant\n%q", got, want)
	}
	if got := poll(t, d, nil); len(got) != 0 {
		t.Errorf("a second poll with nothing new: %q", got)
	}

	// journald archives system.journal and starts a new one.
	os.Rename(filepath.Join(mid, "system.journal"), filepath.Join(mid, "system@0123-0000000000000001-0005f0000000000.journal"))
	next := sample(3, t0.Add(time.Minute))
	write(t, filepath.Join(mid, "system.journal"), next)
	got = poll(t, d, Unit("nginx"))
	if len(got) != 2 || got[0] != next[0].fields[0][1] || got[1] != next[2].fields[0][1] {
		t.Errorf("after the archive, nginx only: %q", got)
	}
}

// TestHostile: files that lie are refused or read up to the lie, never
// followed out of the file; a chain of entry arrays that loops ends.
func TestHostile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "system.journal")
	write(t, path, sample(5, t0), "SYSTEMD_JOURNAL_COMPACT=0")
	good, _ := os.ReadFile(path)
	le := binary.LittleEndian
	tests := []struct {
		name  string
		edit  func(b []byte)
		open  bool // Open still succeeds
		count int  // entries read (when it opens)
		most  bool // ... or at most count: where it stops is journald's business
	}{
		{"no signature", func(b []byte) { copy(b, "XXXXXXXX") }, false, 0, false},
		{"an unknown incompatible flag", func(b []byte) { le.PutUint32(b[12:], le.Uint32(b[12:])|1<<20) }, false, 0, false},
		{"a header larger than the file", func(b []byte) { le.PutUint64(b[88:], 1<<40) }, false, 0, false},
		{"an entry array past the end", func(b []byte) { le.PutUint64(b[176:], uint64(len(b))+8) }, true, 0, false},
		{"more entries than there are", func(b []byte) { le.PutUint64(b[152:], 1<<40) }, true, 5, false},
		{"an entry array that points to itself", func(b []byte) {
			a := le.Uint64(b[176:])
			le.PutUint64(b[a+16:], a)
			le.PutUint64(b[152:], 1000)
		}, true, 5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := append([]byte(nil), good...)
			tt.edit(b)
			jf, err := Open(bytes.NewReader(b), int64(len(b)))
			if (err == nil) != tt.open {
				t.Fatalf("Open: %v", err)
			}
			if err != nil {
				return
			}
			n := 0
			var p Pos
			jf.Read(&p, func(Entry) { n++ }) // an error is expected: what counts is where it stops
			if n != tt.count && !(tt.most && n < tt.count) {
				t.Errorf("read %d entries, want %d", n, tt.count)
			}
		})
	}
}

// TestDecompress: the three compressions systemd writes, and a field that
// claims to decompress past the limit.
func TestDecompress(t *testing.T) {
	want := []byte("MESSAGE=" + strings.Repeat("hello ", 1000))
	z, _ := zstd.NewWriter(nil)
	zs := z.EncodeAll(want, nil)
	lz := make([]byte, lz4.CompressBlockBound(len(want)))
	n, err := lz4.CompressBlock(want, lz, nil)
	if err != nil {
		t.Fatal(err)
	}
	l4 := binary.LittleEndian.AppendUint64(nil, uint64(len(want)))
	l4 = append(l4, lz[:n]...)
	cases := map[string]struct {
		p     []byte
		flags byte
	}{"zstd": {zs, compressedZSTD}, "lz4": {l4, compressedLZ4}, "plain": {want, 0}}
	if _, err := exec.LookPath("xz"); err == nil {
		cmd := exec.Command("xz", "-c", "--check=crc64")
		cmd.Stdin = bytes.NewReader(want)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		cases["xz"] = struct {
			p     []byte
			flags byte
		}{out, compressedXZ}
	}
	for name, c := range cases {
		got, err := decompress(c.p, c.flags)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	bomb := z.EncodeAll(make([]byte, MaxFieldSize+1), nil)
	if _, err := decompress(bomb, compressedZSTD); err == nil {
		t.Error("a field that decompresses past the limit is read")
	}
	huge := binary.LittleEndian.AppendUint64(nil, 1<<40)
	if _, err := decompress(append(huge, lz[:n]...), compressedLZ4); err == nil {
		t.Error("an LZ4 field that claims 1 TiB is read")
	}
}

// FuzzOpen: no file, however damaged, makes the reader panic or read
// outside it. Each input writes bytes at an offset of a real file (compact
// or not): the fuzzer works on small inputs, and the file around them
// stays real enough to be read far.
func FuzzOpen(f *testing.F) {
	var files [][]byte
	for _, env := range []string{"SYSTEMD_JOURNAL_COMPACT=1", "SYSTEMD_JOURNAL_COMPACT=0"} {
		if _, err := os.Stat(remote); err != nil {
			if testenv.CI() {
				f.Fatalf("needs %s", remote)
			}
			break
		}
		dir := f.TempDir()
		var b bytes.Buffer
		for _, e := range sample(6, t0) {
			e.export(&b)
		}
		os.WriteFile(dir+"/in", b.Bytes(), 0o644)
		cmd := exec.Command(remote, "--output="+dir+"/x.journal", dir+"/in")
		cmd.Env = append(os.Environ(), env)
		if out, err := cmd.CombinedOutput(); err != nil {
			f.Fatalf("%s: %v %s", remote, err, out)
		}
		data, _ := os.ReadFile(dir + "/x.journal")
		files = append(files, bytes.TrimRight(data, "\x00"))
	}
	if len(files) == 0 {
		f.Skip("no journal files to damage")
	}
	f.Add(false, uint32(176), []byte{8, 0, 0, 0})
	f.Add(true, uint32(152), []byte{0xff, 0xff})
	f.Add(true, uint32(300000), []byte{6, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, regular bool, off uint32, patch []byte) {
		good := files[0]
		if regular && len(files) > 1 {
			good = files[1]
		}
		data := append([]byte(nil), good...)
		copy(data[int(off)%len(data):], patch)
		jf, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		var p Pos
		jf.Read(&p, func(e Entry) { Short(&e) })
	})
}
