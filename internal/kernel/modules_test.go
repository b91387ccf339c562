package kernel

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A module tree shaped like Debian's, with each module's dependencies
// listed as depmod lists them: all of them, the nearest first.
const testModulesDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`

const testModulesBuiltin = `kernel/fs/fuse/fuse.ko
kernel/drivers/block/virtio_blk.ko
`

func testModDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range map[string]string{"modules.dep": testModulesDep, "modules.builtin": testModulesBuiltin} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestModules(t *testing.T) {
	dir := testModDir(t)
	tests := []struct {
		names []string
		want  []string // relative to dir
	}{
		{[]string{"virtio_mmio"}, []string{
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/virtio/virtio_mmio.ko",
		}},
		{[]string{"virtio_net"}, []string{
			"kernel/net/core/failover.ko",
			"kernel/drivers/net/net_failover.ko",
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/net/virtio_net.ko",
		}},
		{[]string{"virtio_mmio", "virtio_net", "virtio"}, []string{
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/virtio/virtio_mmio.ko",
			"kernel/net/core/failover.ko",
			"kernel/drivers/net/net_failover.ko",
			"kernel/drivers/net/virtio_net.ko",
		}},
		// A dash and an underscore are the same in a module name.
		{[]string{"virtio_rng"}, []string{
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/char/hw_random/virtio-rng.ko.xz",
		}},
		{[]string{"fuse", "virtio-blk"}, nil}, // built in
		{nil, nil},
	}
	for _, tt := range tests {
		got, err := Modules(dir, tt.names...)
		if err != nil {
			t.Errorf("Modules(%q): %v", tt.names, err)
			continue
		}
		var want []string
		for _, p := range tt.want {
			want = append(want, filepath.Join(dir, p))
		}
		if !slices.Equal(got, want) {
			t.Errorf("Modules(%q) =\n%s\nwant\n%s", tt.names, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestModulesErrors(t *testing.T) {
	dir := testModDir(t)
	if got, err := Modules(dir, "virtio_net", "no_such_module"); err == nil {
		t.Errorf("Modules of an unknown module = %q, want an error", got)
	}
	os.Remove(filepath.Join(dir, "modules.builtin"))
	if got, err := Modules(dir, "virtio"); err == nil {
		t.Errorf("Modules without modules.builtin = %q, want an error", got)
	}
	if got, err := Modules(t.TempDir(), "virtio"); err == nil {
		t.Errorf("Modules without modules.dep = %q, want an error", got)
	}
}

func TestModuleName(t *testing.T) {
	tests := map[string]string{
		"kernel/fs/fuse/virtiofs.ko":                     "virtiofs",
		"kernel/drivers/char/hw_random/virtio-rng.ko.xz": "virtio_rng",
		"kernel/drivers/net/virtio_net.ko.zst":           "virtio_net",
	}
	for path, want := range tests {
		if got := moduleName(path); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", path, got, want)
		}
	}
}
