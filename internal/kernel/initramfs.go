package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// LoadOrder is the file in the initramfs that names the modules under
// /lib/modules, one file name a line, in the order to load them.
const LoadOrder = "/lib/modules/load.order"

// Directories of the initramfs: the mount points the init needs.
var initramfsDirs = []string{"dev", "proc", "sys", "run", "mnt", "lib", "lib/modules"}

// File types of a cpio entry's mode, as in stat(2).
const (
	typeDir  = 0o040000
	typeChar = 0o020000
	typeFile = 0o100000
)

// WriteInitramfs writes an initramfs to w: a gzip-compressed newc cpio
// archive with initProgram as /init, the directories the init mounts on,
// /dev/console, and the modules (files as [Modules] returns them, in load
// order) decompressed under /lib/modules and listed in [LoadOrder].
//
// The output depends only on the input (every time stamp is zero), so it
// can be cached and compared.
func WriteInitramfs(w io.Writer, initProgram []byte, modules []string) error {
	zw := gzip.NewWriter(w) // its header has no name and a zero time
	c := &cpioWriter{w: zw}
	for _, dir := range initramfsDirs {
		c.add(dir, typeDir|0o755, nil)
	}
	// The kernel opens /dev/console for init's stdin, stdout and stderr
	// before anything mounts devtmpfs. Debian's kernel has one in its
	// built-in initramfs, but a kernel need not.
	c.addDevice("dev/console", typeChar|0o600, 5, 1)
	c.add("init", typeFile|0o755, initProgram)
	var order strings.Builder
	for _, path := range modules {
		name, data, err := readModule(path)
		if err != nil {
			return fmt.Errorf("writing initramfs: %w", err)
		}
		c.add("lib/modules/"+name, typeFile|0o644, data)
		order.WriteString(name + "\n")
	}
	c.add(strings.TrimPrefix(LoadOrder, "/"), typeFile|0o644, []byte(order.String()))
	c.add("TRAILER!!!", 0, nil) // the end of a cpio archive
	if c.err != nil {
		return fmt.Errorf("writing initramfs: %w", c.err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	return nil
}

// readModule returns the file name a module has in the initramfs
// (virtio.ko for virtio.ko.xz) and its contents, decompressed: loading a
// compressed module would need the kernel to have the decompressor built
// in (CONFIG_MODULE_DECOMPRESS).
func readModule(path string) (name string, data []byte, err error) {
	data, err = os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("reading module: %w", err)
	}
	if f := detect(data); f != nil {
		if data, err = f.decode(data); err != nil {
			return "", nil, fmt.Errorf("decompressing %s: %w", path, err)
		}
	}
	if !bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return "", nil, fmt.Errorf("reading module %s: not an ELF file", path)
	}
	base, _, _ := strings.Cut(filepath.Base(path), ".ko")
	return base + ".ko", data, nil
}

// cpioWriter writes a cpio archive in the "newc" format, the one the
// kernel reads (Documentation/driver-api/early-userspace/buffer-format.rst).
// The first error sticks and stops all later writes.
type cpioWriter struct {
	w   io.Writer
	ino uint32 // the last inode number given out
	err error
}

func (c *cpioWriter) add(name string, mode uint32, data []byte) {
	c.entry(name, mode, 0, 0, data)
}

func (c *cpioWriter) addDevice(name string, mode, major, minor uint32) {
	c.entry(name, mode, major, minor, nil)
}

// entry writes a 110-byte header of hex fields, then the name with its
// NUL, then the data; name and data each end padded to 4 bytes. Owner,
// group and time stamp are zero; no entry is a hard link (nlink 1).
func (c *cpioWriter) entry(name string, mode, rdevMajor, rdevMinor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	var b bytes.Buffer
	fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	b.WriteString(name + "\x00")
	pad4(&b)
	b.Write(data)
	pad4(&b)
	_, c.err = c.w.Write(b.Bytes())
}

// pad4 pads b with NULs to a multiple of 4 bytes. Every entry starts
// aligned, so the entry's own length is what needs padding.
func pad4(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
