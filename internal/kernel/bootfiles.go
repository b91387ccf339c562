package kernel

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// WriteVmlinux extracts the uncompressed kernel from the bzImage at src into
// dst, after checking it has the PVH entry point both VMMs boot it by.
func WriteVmlinux(src, dst string) error {
	bz, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading kernel: %w", err)
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return err
	}
	if ok, err := HasPVH(vmlinux); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("kernel %s has no PVH entry point (CONFIG_PVH): the VMMs cannot boot it", src)
	}
	return writeAtomic(dst, vmlinux)
}

// UpdateInitramfs writes the initramfs of the image at root: the guest's
// init program and the modules a guest needs, from the image's kernel. The
// initramfs depends on the program as well as on the image, so it is made
// again whenever either changes; the output is deterministic, so dst is
// rewritten only when its bytes would change. It reports whether it wrote.
func UpdateInitramfs(root, initProgram, dst string) (bool, error) {
	k, err := Find(root)
	if err != nil {
		return false, err
	}
	mods, err := Modules(k.Modules, GuestModules...)
	if err != nil {
		return false, err
	}
	init, err := os.ReadFile(initProgram)
	if err != nil {
		return false, fmt.Errorf("reading the guest's init: %w", err)
	}
	var b bytes.Buffer
	if err := WriteInitramfs(&b, init, mods); err != nil {
		return false, err
	}
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, b.Bytes()) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, fmt.Errorf("writing %s: %w", dst, err)
	}
	return true, writeAtomic(dst, b.Bytes())
}

// FindInit returns the guest's init program, microvm-init: $MICROVM_INIT if
// set, else the file beside the running program, else one on PATH. It must
// be statically linked, since the initramfs holds no libraries.
func FindInit() (string, error) {
	path := os.Getenv("MICROVM_INIT")
	if path == "" {
		if exe, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(exe), "microvm-init"); exists(p) {
				path = p
			}
		}
	}
	if path == "" {
		p, err := exec.LookPath("microvm-init")
		if err != nil {
			return "", fmt.Errorf("microvm-init, the guest's init, is not beside microvm nor on PATH; build both: CGO_ENABLED=0 go build -o /usr/local/bin/ ./cmd/...")
		}
		path = p
	}
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked and cannot run in the initramfs; build it with CGO_ENABLED=0", path)
		}
	}
	return path, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// writeAtomic writes data to a temporary file beside path and renames it
// into place, so a VMM never reads a half-written file.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
