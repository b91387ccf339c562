package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// makeRoot creates the files (empty) and directories (ending in /) of
// paths under a new root, and the symlinks of links (path -> target).
func makeRoot(t *testing.T, paths []string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range paths {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for p, target := range links {
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFind(t *testing.T) {
	tests := []struct {
		name        string
		paths       []string
		links       map[string]string
		wantVersion string
		wantModules string // relative to the root
	}{{
		name:        "split /lib, as the kernel package ships it",
		paths:       []string{"boot/vmlinuz-6.1.0-9-cloud-amd64", "lib/modules/6.1.0-9-cloud-amd64/"},
		wantVersion: "6.1.0-9-cloud-amd64",
		wantModules: "lib/modules/6.1.0-9-cloud-amd64",
	}, {
		name: "merged /usr",
		paths: []string{
			"boot/vmlinuz-6.1.0-9-cloud-amd64", "usr/lib/modules/6.1.0-9-cloud-amd64/",
		},
		links:       map[string]string{"lib": "usr/lib"},
		wantVersion: "6.1.0-9-cloud-amd64",
		wantModules: "usr/lib/modules/6.1.0-9-cloud-amd64",
	}, {
		name: "newest by number, not by string",
		paths: []string{
			"boot/vmlinuz-6.1.0-9-cloud-amd64", "lib/modules/6.1.0-9-cloud-amd64/",
			"boot/vmlinuz-6.1.0-10-cloud-amd64", "lib/modules/6.1.0-10-cloud-amd64/",
			"boot/vmlinuz.old", "boot/config-6.1.0-11-cloud-amd64",
		},
		wantVersion: "6.1.0-10-cloud-amd64",
		wantModules: "lib/modules/6.1.0-10-cloud-amd64",
	}, {
		name: "newest image without modules is left out",
		paths: []string{
			"boot/vmlinuz-6.1.0-9-cloud-amd64", "lib/modules/6.1.0-9-cloud-amd64/",
			"boot/vmlinuz-6.1.0-10-cloud-amd64",
		},
		wantVersion: "6.1.0-9-cloud-amd64",
		wantModules: "lib/modules/6.1.0-9-cloud-amd64",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := makeRoot(t, tt.paths, tt.links)
			got, err := Find(root)
			if err != nil {
				t.Fatalf("Find: %v", err)
			}
			want := Kernel{
				Version: tt.wantVersion,
				Image:   filepath.Join(root, "boot", "vmlinuz-"+tt.wantVersion),
				Modules: filepath.Join(root, tt.wantModules),
			}
			if got != want {
				t.Errorf("Find =\n%+v, want\n%+v", got, want)
			}
		})
	}
}

// An image's /lib may be an absolute symlink to /usr/lib, which from the
// host is the host's own /usr/lib. Find must not follow it there.
func TestFindAbsoluteLibLink(t *testing.T) {
	const version = "6.1.0-9-cloud-amd64"
	host := makeRoot(t, []string{"usr/lib/modules/" + version + "/"}, nil)
	root := makeRoot(t, []string{"boot/vmlinuz-" + version, "usr/lib/modules/" + version + "/"},
		map[string]string{"lib": filepath.Join(host, "usr/lib")})
	k, err := Find(root)
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	if want := filepath.Join(root, "usr/lib/modules", version); k.Modules != want {
		t.Errorf("Find found modules in %s, want %s", k.Modules, want)
	}
}

func TestFindNone(t *testing.T) {
	root := makeRoot(t, []string{"boot/vmlinuz-6.1.0-9-cloud-amd64", "lib/modules/6.1.0-10-cloud-amd64/"}, nil)
	if k, err := Find(root); err == nil {
		t.Errorf("Find = %+v, want an error", k)
	}
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-10-cloud-amd64", "6.1.0-9-cloud-amd64", 1},
		{"6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", -1},
		{"6.1.0-9-cloud-amd64", "6.1.0-9-cloud-amd64", 0},
		{"5.10.0-30-amd64", "6.1.0-9-amd64", -1},
		{"6.12.3", "6.1.40", 1},
		{"6.1", "6.1.0", -1},
		{"6.1.0-9-amd64", "6.1.0-9-cloud-amd64", -1},
	}
	for _, tt := range tests {
		if got := compareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
