package guest

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// put writes files into the tree at root: path -> content, or "-> TARGET"
// for a symlink, or "/" for a directory, or "" to remove.
func put(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, body := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		var err error
		switch {
		case body == "":
			err = os.RemoveAll(full)
		case body == "/":
			err = os.MkdirAll(full, 0o755)
		case strings.HasPrefix(body, "-> "):
			os.Remove(full)
			err = os.Symlink(strings.TrimPrefix(body, "-> "), full)
		default:
			err = os.WriteFile(full, []byte(body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(b)
}

// links lists the symlinks under the VM's /etc/systemd/system: path ->
// target.
func links(t *testing.T, vm *config.VM) map[string]string {
	t.Helper()
	out := map[string]string{}
	root := filepath.Join(vm.EtcDir, "systemd/system")
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			rel, _ := filepath.Rel(root, p)
			out[rel] = target
		}
		return nil
	})
	return out
}

// unitImage is an image with units to enable: what systemctl would find.
var unitImage = map[string]string{
	"lib/systemd/system/web.service":        "[Unit]\nDescription=web\n[Install]\nWantedBy=multi-user.target\nAlso=web.socket\nAlias=www.service\n",
	"lib/systemd/system/web.socket":         "[Socket]\nListenStream=80\n[Install]\nWantedBy=sockets.target\n",
	"lib/systemd/system/db.service":         "[Install]\nRequiredBy=web.service\nWantedBy=multi-user.target  graphical.target\n",
	"lib/systemd/system/mail.service":       "[Install]\nWantedBy=multi-user.target\nAlias=mta.service\n",
	"lib/systemd/system/static.service":     "[Unit]\nDescription=started by another\n[Service]\nExecStart=/bin/true\n",
	"lib/systemd/system/getty@.service":     "[Install]\nWantedBy=getty.target\nAlias=tty@.service\n",
	"usr/lib/systemd/system/masked.service": "[Install]\nWantedBy=multi-user.target\n",
	"lib/systemd/system/odd.service":        "[Install]\nWantedBy=../../escape.target multi-user.target\nAlias=../x.service .hidden.service\n",
	// Enabled by the image's own /etc, and masked there:
	"etc/systemd/system/multi-user.target.wants/mail.service": "-> /lib/systemd/system/mail.service",
	"etc/systemd/system/mta.service":                          "-> /lib/systemd/system/mail.service",
	"etc/systemd/system/masked.service":                       "-> /dev/null",
}

// TestServices: services and disable_services make and remove the links
// systemctl enable and disable make and remove.
func TestServices(t *testing.T) {
	tests := []struct {
		name            string
		enable, disable []string
		added, removed  map[string]string // links, against the image's
		err             string
	}{{
		name:   "WantedBy, Also, Alias",
		enable: []string{"web.service"},
		added: map[string]string{
			"multi-user.target.wants/web.service": "/lib/systemd/system/web.service",
			"sockets.target.wants/web.socket":     "/lib/systemd/system/web.socket",
			"www.service":                         "/lib/systemd/system/web.service",
		},
	}, {
		name:   "RequiredBy, two WantedBy",
		enable: []string{"db.service"},
		added: map[string]string{
			"web.service.requires/db.service":    "/lib/systemd/system/db.service",
			"multi-user.target.wants/db.service": "/lib/systemd/system/db.service",
			"graphical.target.wants/db.service":  "/lib/systemd/system/db.service",
		},
	}, {
		name:   "an instance of a template",
		enable: []string{"getty@tty2.service"},
		added: map[string]string{
			"getty.target.wants/getty@tty2.service": "/lib/systemd/system/getty@.service",
			"tty@tty2.service":                      "/lib/systemd/system/getty@.service",
		},
	}, {
		name:    "masked in the VM: unmasked",
		enable:  []string{"masked.service"},
		added:   map[string]string{"multi-user.target.wants/masked.service": "/usr/lib/systemd/system/masked.service"},
		removed: map[string]string{"masked.service": "/dev/null"},
	}, {
		name:    "disabled, with its alias, although the image enabled it",
		disable: []string{"mail.service"},
		removed: map[string]string{
			"multi-user.target.wants/mail.service": "/lib/systemd/system/mail.service",
			"mta.service":                          "/lib/systemd/system/mail.service",
		},
	}, {
		name:    "disabled with what its Also= names",
		enable:  []string{"web.service"},
		disable: []string{"web.service"},
	}, {
		name:   "names in [Install] that are not names",
		enable: []string{"odd.service"},
		added:  map[string]string{"multi-user.target.wants/odd.service": "/lib/systemd/system/odd.service"},
	}, {
		name:   "a unit the image lacks",
		enable: []string{"nosuch.service"},
		err:    "unit nosuch.service is not in the VM's image",
	}, {
		name:    "a unit to disable that the image lacks",
		disable: []string{"nosuch.service"},
		err:     "unit nosuch.service is not in the VM's image",
	}, {
		name:   "a unit without [Install]",
		enable: []string{"static.service"},
		err:    "unit static.service has no [Install] section",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, image := seeded(t, unitImage)
			before := links(t, vm)
			vm.Services, vm.DisableServices = tt.enable, tt.disable
			err := WriteDeclared(vm, image)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("WriteDeclared: %v, want %q", err, tt.err)
				}
				if errs := UnitsMissing(vm, []string{image}); len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.err) {
					t.Errorf("UnitsMissing (plan's check) = %v, want %q", errs, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if errs := UnitsMissing(vm, []string{image}); len(errs) > 0 {
				t.Errorf("UnitsMissing = %v", errs)
			}
			after := links(t, vm)
			added, removed := map[string]string{}, map[string]string{}
			for l, target := range after {
				if before[l] != target {
					added[l] = target
				}
			}
			for l, target := range before {
				if after[l] != target {
					removed[l] = target
				}
			}
			if !maps.Equal(added, orNone(tt.added)) || !maps.Equal(removed, orNone(tt.removed)) {
				t.Errorf("links added %v, removed %v; want added %v, removed %v", added, removed, tt.added, tt.removed)
			}
			// Again at the next start: nothing more changes.
			if err := WriteDeclared(vm, image); err != nil {
				t.Fatal(err)
			}
			if again := links(t, vm); !maps.Equal(again, after) {
				t.Errorf("the second start changed the links: %v, then %v", after, again)
			}
		})
	}
}

func orNone(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// TestDisabledStaysDisabled: a unit the image's /etc enables and
// disable_services disables is not enabled again by a merge of the
// image's next version, which still enables it (the link is in the base,
// and the VM removed it: its choice), nor when the image moves the link.
func TestDisabledStaysDisabled(t *testing.T) {
	vm, image := seeded(t, unitImage)
	vm.DisableServices = []string{"mail.service"}
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	put(t, image, map[string]string{"etc/new.conf": "new\n", "etc/systemd/system/mta.service": "-> /usr/lib/systemd/system/mail.service"})
	if _, err := Merge(vm, image, "img.2"); err != nil {
		t.Fatal(err)
	}
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	got := links(t, vm)
	if target, ok := got["multi-user.target.wants/mail.service"]; ok {
		t.Errorf("the merge enabled mail.service again: -> %s", target)
	}
	if got := read(t, filepath.Join(vm.EtcDir, "new.conf")); got != "new\n" {
		t.Errorf("the rest of the merge: new.conf = %q", got)
	}
}

// TestServicesLayers: plan's check reads an image not mounted yet, as its
// layers: a unit its upper layer removed (a whiteout) is not there.
func TestServicesLayers(t *testing.T) {
	testenv := t.TempDir()
	lower, upper := filepath.Join(testenv, "lower"), filepath.Join(testenv, "upper")
	put(t, lower, map[string]string{
		"usr/lib/systemd/system/a.service": "[Install]\nWantedBy=multi-user.target\n",
		"usr/lib/systemd/system/b.service": "[Install]\nWantedBy=multi-user.target\n",
		"lib":                              "-> usr/lib",
	})
	put(t, upper, map[string]string{"usr/lib/systemd/system/c.service": "[Install]\nWantedBy=multi-user.target\n"})
	if err := unix.Mknod(filepath.Join(upper, "usr/lib/systemd/system/b.service"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	vm := &config.VM{Name: "vm1", Services: []string{"a.service", "b.service", "c.service"}}
	errs := UnitsMissing(vm, []string{upper, lower})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "unit b.service is not in the VM's image") {
		t.Errorf("UnitsMissing = %v, want only b.service (whited out)", errs)
	}
	if u, err := findUnit([]string{upper, lower}, "a.service"); err != nil || u.path != "/lib/systemd/system/a.service" {
		t.Errorf("a.service: %+v, %v; want it found through lib -> usr/lib", u, err)
	}
}

// TestServicesHostile: a .wants directory the guest replaced by a symlink
// to a host directory: enabling fails, and nothing is written there.
func TestServicesHostile(t *testing.T) {
	vm, image := seeded(t, unitImage)
	outside := t.TempDir()
	put(t, vm.StateDir, map[string]string{"etc/systemd/system/sockets.target.wants": "-> " + outside})
	vm.Services = []string{"web.service"}
	if err := WriteDeclared(vm, image); err == nil || !errors.Is(err, safedir.ErrSymlink) {
		t.Errorf("WriteDeclared through a symlinked .wants: %v, want %v", err, safedir.ErrSymlink)
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("written outside the tree: %v", entries)
	}
}

// accountsImage has users, as an image's /etc does.
var accountsImage = map[string]string{
	"etc/passwd": "root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/sh\n",
	"etc/group":  "root:x:0:\nwww-data:x:33:\nadm:x:4:\n",
}

// TestFiles: declared files, with their modes and owners (from the VM's
// own accounts), written at every start over what the guest made of them.
func TestFiles(t *testing.T) {
	vm, image := seeded(t, accountsImage)
	// The guest's own idea of www-data: it only changes who owns its file.
	put(t, vm.StateDir, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\nwww-data:x:1033:1033::/var/www:/bin/sh\n"})
	vm.Files = []config.File{
		{Path: "/srv/www/index.html", Content: "<h1>hi</h1>\n", Mode: 0o640, Owner: "www-data", Group: "adm"},
		{Path: "/etc/app/app.conf", Content: "x=1\n", Mode: 0o600, Owner: "0", Group: "0"},
		{Path: "/etc/numeric", Content: "n\n", Mode: 0o644, Owner: "4242", Group: "4343"},
		{Path: "/var/www/cgi/page", Content: "#!/bin/sh\n", Mode: 0o755, Owner: "root", Group: "root"},
	}
	for i := range vm.Files {
		vm.Files[i].Sum = "x"
	}
	for start := range 2 {
		if err := WriteDeclared(vm, image); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			path     string
			body     string
			mode     uint32
			uid, gid int
		}{
			{"var/srv/www/index.html", "<h1>hi</h1>\n", 0o640, 1033, 4},
			{"var/srv/www", "/", 0o755, 0, 0},
			{"var/srv", "/", 0o755, 0, 0},
			{"etc/app/app.conf", "x=1\n", 0o600, 0, 0},
			{"etc/numeric", "n\n", 0o644, 4242, 4343},
			{"var/www/cgi/page", "#!/bin/sh\n", 0o755, 0, 0},
		} {
			body, mode, uid, gid := state(t, vm.StateDir, c.path)
			if body != c.body || mode != c.mode || uid != c.uid || gid != c.gid {
				t.Errorf("start %d: %s is %q %#o %d:%d, want %q %#o %d:%d", start, c.path, body, mode, uid, gid, c.body, c.mode, c.uid, c.gid)
			}
		}
		// The guest changes them; the next start puts them back.
		put(t, vm.StateDir, map[string]string{"var/srv/www/index.html": "the guest's\n", "etc/app/app.conf": "-> /etc/shadow"})
		os.Chmod(filepath.Join(vm.VarDir, "www/cgi/page"), 0o777)
	}
	// A file no longer declared is the VM's: left as it is.
	vm.Files = vm.Files[1:]
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(vm.VarDir, "srv/www/index.html")); got != "the guest's\n" {
		t.Errorf("a file taken out of infra.toml = %q, want the VM's", got)
	}
}

// TestFilesErrors: what WriteDeclared refuses, writing nothing outside
// the VM's trees.
func TestFilesErrors(t *testing.T) {
	tests := []struct {
		name  string
		guest func(t *testing.T, vm *config.VM, outside string)
		file  config.File
		err   string
	}{{
		name: "a user the VM does not have",
		file: config.File{Path: "/etc/x", Owner: "nginx", Group: "nginx", Mode: 0o644},
		err:  `the VM has no user "nginx" in its /etc/passwd`,
	}, {
		name: "a group the VM does not have",
		file: config.File{Path: "/etc/x", Owner: "root", Group: "nginx", Mode: 0o644},
		err:  `the VM has no group "nginx" in its /etc/group`,
	}, {
		name: "a directory on the way replaced by a symlink",
		guest: func(t *testing.T, vm *config.VM, outside string) {
			put(t, vm.StateDir, map[string]string{"var/srv": "-> " + outside})
		},
		file: config.File{Path: "/srv/www/index.html", Owner: "root", Group: "root", Mode: 0o644},
		err:  "symlink",
	}, {
		name: "a directory on the way replaced by a symlink inside the tree",
		guest: func(t *testing.T, vm *config.VM, outside string) {
			put(t, vm.StateDir, map[string]string{"etc/nginx": "-> ../var"})
		},
		file: config.File{Path: "/etc/nginx/nginx.conf", Owner: "root", Group: "root", Mode: 0o644},
		err:  "symlink",
	}, {
		name: "its /etc/passwd a FIFO",
		guest: func(t *testing.T, vm *config.VM, outside string) {
			os.Remove(filepath.Join(vm.EtcDir, "passwd"))
			if err := syscall.Mkfifo(filepath.Join(vm.EtcDir, "passwd"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		file: config.File{Path: "/etc/x", Owner: "www-data", Group: "www-data", Mode: 0o644},
		err:  "not a regular file",
	}, {
		name: "its /etc/passwd huge",
		guest: func(t *testing.T, vm *config.VM, outside string) {
			if err := os.Truncate(filepath.Join(vm.EtcDir, "passwd"), 1<<30); err != nil {
				t.Fatal(err)
			}
		},
		file: config.File{Path: "/etc/x", Owner: "www-data", Group: "www-data", Mode: 0o644},
		err:  "too large",
	}, {
		name: "a directory where the file goes",
		guest: func(t *testing.T, vm *config.VM, outside string) {
			put(t, vm.StateDir, map[string]string{"etc/x/y": "the guest's"})
		},
		file: config.File{Path: "/etc/x", Owner: "root", Group: "root", Mode: 0o644},
		err:  "/etc/x",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm, image := seeded(t, accountsImage)
			outside := t.TempDir()
			if tt.guest != nil {
				tt.guest(t, vm, outside)
			}
			tt.file.Content = "declared\n"
			vm.Files = []config.File{tt.file}
			err := WriteDeclared(vm, image)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("WriteDeclared: %v, want %q", err, tt.err)
			}
			if entries, _ := os.ReadDir(outside); len(entries) > 0 {
				t.Errorf("written outside the tree: %v", entries)
			}
		})
	}
}

// TestRunOnce: run_once's script and unit, while the list is there: after
// the network and the VM's services, once per version of the list.
func TestRunOnce(t *testing.T) {
	vm, image := seeded(t, unitImage)
	vm.Services = []string{"web.service"}
	vm.RunOnce = []string{"echo first", "redis-cli set greeting 'hello'"}
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	script := read(t, filepath.Join(vm.EtcDir, runOnceScript))
	if !strings.HasSuffix(script, "set -e\necho first\nredis-cli set greeting 'hello'\n") {
		t.Errorf("run_once's script:\n%s", script)
	}
	unit := read(t, filepath.Join(vm.EtcDir, "systemd/system", runOnceUnit))
	stamp := "/var/lib/microvm/run-once-" + RunOnceHash(vm.RunOnce) + ".done"
	for _, want := range []string{"After=network-online.target web.service\n", "ConditionPathExists=!" + stamp + "\n", "ExecStart=/bin/sh -e /etc/microvm/run-once.sh\n", "touch " + stamp} {
		if !strings.Contains(unit, want) {
			t.Errorf("run_once's unit lacks %q:\n%s", want, unit)
		}
	}
	if got := links(t, vm)["multi-user.target.wants/"+runOnceUnit]; got != "/etc/systemd/system/"+runOnceUnit {
		t.Errorf("run_once's unit is enabled as %q", got)
	}
	for _, p := range []string{runOnceScript, "systemd/system/" + runOnceUnit} {
		if _, mode, uid, _ := state(t, vm.EtcDir, p); uid != 0 || mode&0o022 != 0 {
			t.Errorf("%s is %#o, uid %d: only root may change it", p, mode, uid)
		}
	}
	if RunOnceHash([]string{"echo first"}) == RunOnceHash(vm.RunOnce) || RunOnceHash([]string{"a b"}) == RunOnceHash([]string{"a", "b"}) {
		t.Error("two lists have one hash: a changed list would not run again")
	}
	// The key leaves infra.toml: its unit and script go.
	vm.RunOnce = nil
	if err := WriteDeclared(vm, image); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{runOnceScript, runOnceLink, "systemd/system/" + runOnceUnit} {
		if _, err := os.Lstat(filepath.Join(vm.EtcDir, p)); err == nil {
			t.Errorf("%s is still there after run_once left the file", p)
		}
	}
}
