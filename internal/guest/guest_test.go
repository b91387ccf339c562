package guest

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// makeImage makes an image's root filesystem with a file of each kind Seed
// must copy faithfully, and returns its path.
func makeImage(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, e := range []struct {
		path string
		mode fs.FileMode // fs.ModeDir for a directory
		data string      // a file's content or a symlink's target
	}{
		{"etc", fs.ModeDir | 0o755, ""},
		{"etc/hostname", 0o644, "localhost\n"},
		{"etc/machine-id", 0o444, ""},
		{"etc/shadow", 0o640, "root:*:19000:0:99999:7:::\n"},
		{"etc/ssh", fs.ModeDir | 0o755, ""},
		{"etc/ssh/sshd_config", 0o644, "Include /etc/ssh/sshd_config.d/*.conf\n"},
		{"etc/alternatives", fs.ModeDir | 0o755, ""},
		{"etc/alternatives/nc", fs.ModeSymlink, "/bin/nc.openbsd"},
		{"var", fs.ModeDir | 0o755, ""},
		{"var/tmp", fs.ModeDir | 0o1777, ""},
		{"var/mail", fs.ModeDir | 0o2775, ""},
		{"var/lib", fs.ModeDir | 0o755, ""},
		{"var/lib/dbus", fs.ModeDir | 0o755, ""},
		{"var/lib/dbus/machine-id", fs.ModeSymlink, "/etc/machine-id"},
		{"var/root", fs.ModeDir | 0o700, ""},
		{"var/root/.bashrc", 0o644, "PS1='# '\n"},
	} {
		p := filepath.Join(root, e.path)
		var err error
		switch {
		case e.mode.IsDir():
			if err = os.MkdirAll(p, 0o755); err == nil {
				err = os.Chmod(p, e.mode)
			}
		case e.mode&fs.ModeSymlink != 0:
			err = os.Symlink(e.data, p)
		default:
			if err = os.WriteFile(p, []byte(e.data), 0o600); err == nil {
				err = os.Chmod(p, e.mode)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if os.Geteuid() == 0 { // ownership is kept too
		if err := os.Lchown(filepath.Join(root, "etc/shadow"), 0, 42); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// listTree renders every entry under dir, with its type, mode, owner and
// content or target, one a line.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, path)
		line := fmt.Sprintf("%s %d:%d %s", fi.Mode(), st.Uid, st.Gid, rel)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			line += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(path)
			line += fmt.Sprintf(" %q", b)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// testVM returns a VM whose state lives in a new temporary directory.
// Seed makes that directory root's: the tests run as root.
func testVM(t *testing.T) *config.VM {
	testenv.NeedRoot(t)
	dir := filepath.Join(t.TempDir(), "vm1")
	return &config.VM{
		Name:     "vm1",
		Addr:     netip.MustParseAddr("10.1.0.2"),
		DNS:      "1.1.1.1",
		StateDir: dir,
		EtcDir:   filepath.Join(dir, "etc"),
		VarDir:   filepath.Join(dir, "var"),
	}
}

func TestSeed(t *testing.T) {
	image := makeImage(t)
	tests := []struct {
		name   string
		before func(t *testing.T, vm *config.VM, tree, src string) // prepares the VM's state directory
		want   func(src string) string                             // the tree's listing after Seed
	}{{
		name:   "first start",
		before: func(t *testing.T, vm *config.VM, tree, src string) {},
		want:   func(src string) string { return listTree(t, src) },
	}, {
		name:   "empty directories",
		before: func(t *testing.T, vm *config.VM, tree, src string) { mkdir(t, filepath.Join(vm.StateDir, tree)) },
		want:   func(src string) string { return listTree(t, src) },
	}, {
		name: "seeded before: the VM's own",
		before: func(t *testing.T, vm *config.VM, tree, src string) {
			mkdir(t, filepath.Join(vm.StateDir, tree))
			writeText(t, filepath.Join(vm.StateDir, tree, "mine"), "the user's")
		},
		want: nil, // unchanged
	}, {
		name: "interrupted while copying",
		before: func(t *testing.T, vm *config.VM, tree, src string) {
			mkdir(t, filepath.Join(vm.Staging(tree), "half"))
		},
		want: func(src string) string { return listTree(t, src) },
	}, {
		// The names an older version kept its progress under mean
		// nothing now, wherever the guest points them.
		name: "guest-made marks and symlinks",
		before: func(t *testing.T, vm *config.VM, tree, src string) {
			mkdir(t, filepath.Join(vm.StateDir, tree))
			os.Symlink("/etc/ssh", filepath.Join(vm.StateDir, tree, ".microvm-seed-done"))
			os.Symlink("/root", filepath.Join(vm.StateDir, tree, ".microvm-seed-copy"))
		},
		want: nil,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := testVM(t)
			tt.before(t, vm, "etc", filepath.Join(image, "etc"))
			tt.before(t, vm, "var", filepath.Join(image, "var"))
			wantEtc, wantVar := "", ""
			if tt.want == nil {
				wantEtc, wantVar = listTree(t, vm.EtcDir), listTree(t, vm.VarDir)
			} else {
				wantEtc, wantVar = tt.want(filepath.Join(image, "etc")), tt.want(filepath.Join(image, "var"))
			}
			if err := Seed(vm, image); err != nil {
				t.Fatal(err)
			}
			if got := listTree(t, vm.EtcDir); got != wantEtc {
				t.Errorf("etc:\n%s\nwant\n%s", got, wantEtc)
			}
			if got := listTree(t, vm.VarDir); got != wantVar {
				t.Errorf("var:\n%s\nwant\n%s", got, wantVar)
			}
			// The state directory is root's alone, marked as a VM's,
			// with nothing left over.
			if fi, err := os.Stat(vm.StateDir); err != nil || fi.Mode() != fs.ModeDir|0o700 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
				t.Errorf("state directory: %v, %v; want root's, 0700", fi.Mode(), err)
			}
			entries, _ := os.ReadDir(vm.StateDir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if got := strings.Join(names, " "); got != ".microvm-vm etc var" {
				t.Errorf("state directory holds %q, want .microvm-vm etc var", got)
			}
			if ok, err := IsVMState(vm); !ok || err != nil {
				t.Errorf("IsVMState = %v, %v", ok, err)
			}
		})
	}
}

// TestSeedOnce proves that a VM's /etc and /var are its own after the
// first start: a user's changes survive later starts, and changes to the
// image do not reach them.
func TestSeedOnce(t *testing.T) {
	image := makeImage(t)
	vm := testVM(t)
	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	writeText(t, filepath.Join(vm.EtcDir, "motd"), "the user's")
	if err := os.Remove(filepath.Join(vm.VarDir, "root/.bashrc")); err != nil {
		t.Fatal(err)
	}
	writeText(t, filepath.Join(image, "etc/new-in-image"), "new")
	etc, vars := listTree(t, vm.EtcDir), listTree(t, vm.VarDir)

	if err := Seed(vm, image); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, vm.EtcDir); got != etc {
		t.Errorf("etc changed:\n%s\nwant\n%s", got, etc)
	}
	if got := listTree(t, vm.VarDir); got != vars {
		t.Errorf("var changed:\n%s\nwant\n%s", got, vars)
	}
}

// testKey returns a fixed public key in authorized_keys form.
func testKey(t *testing.T, seed byte, comment string) string {
	t.Helper()
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + comment
}

func TestWriteManaged(t *testing.T) {
	vm := testVM(t)
	if err := Seed(vm, makeImage(t)); err != nil {
		t.Fatal(err)
	}
	keys := Keys{Admin: testKey(t, 1, AdminComment), Users: []string{testKey(t, 2, "alice@laptop")}}
	if err := WriteManaged(vm, keys); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"hostname":        filepath.Join(vm.EtcDir, "hostname"),
		"hosts":           filepath.Join(vm.EtcDir, "hosts"),
		"resolv.conf":     filepath.Join(vm.EtcDir, "resolv.conf"),
		"authorized_keys": vm.AuthorizedKeys(),
	}
	for name, path := range files {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", "managed", name+".golden")
		if testenv.Update() {
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n%s\nwant (%s)\n%s", name, got, golden, want)
		}
	}

	// What is random is checked by its form, and its modes.
	id, err := os.ReadFile(filepath.Join(vm.EtcDir, "machine-id"))
	if err != nil || !isMachineID(strings.TrimSuffix(string(id), "\n")) {
		t.Errorf("machine-id = %q, %v; want 32 hex digits", id, err)
	}
	for _, tt := range []struct {
		path string
		want fs.FileMode
	}{
		{filepath.Join(vm.EtcDir, "machine-id"), 0o444},
		{vm.HostKey(), 0o600},
		{vm.HostKey() + ".pub", 0o644},
		{vm.AuthorizedKeys(), 0o600},
		{filepath.Dir(vm.AuthorizedKeys()), fs.ModeDir | 0o700},
		{filepath.Join(vm.VarDir, "root"), fs.ModeDir | 0o700}, // the seeded one, kept
	} {
		fi, err := os.Lstat(tt.path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != tt.want {
			t.Errorf("%s has mode %s, want %s", tt.path, fi.Mode(), tt.want)
		}
	}
	pub, err := HostPublicKey(vm)
	if err != nil {
		t.Fatal(err)
	}
	checkKeyPair(t, vm.HostKey(), pub)
	if !strings.HasSuffix(pub, " root@vm1") {
		t.Errorf("host key %q has not the comment root@vm1", pub)
	}
}

// TestWriteManagedStable proves that a second start changes nothing: the
// host key and machine ID are made once, and files with the right content
// are not rewritten.
func TestWriteManagedStable(t *testing.T) {
	vm := testVM(t)
	if err := Seed(vm, makeImage(t)); err != nil {
		t.Fatal(err)
	}
	keys := Keys{Admin: testKey(t, 1, AdminComment)}
	if err := WriteManaged(vm, keys); err != nil {
		t.Fatal(err)
	}
	etc, vars := listTree(t, vm.EtcDir), listTree(t, vm.VarDir)
	inodes := inodesOf(t, vm.HostKey(), filepath.Join(vm.EtcDir, "hosts"), filepath.Join(vm.EtcDir, "machine-id"))
	if err := WriteManaged(vm, keys); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, vm.EtcDir); got != etc {
		t.Errorf("etc changed:\n%s\nwant\n%s", got, etc)
	}
	if got := listTree(t, vm.VarDir); got != vars {
		t.Errorf("var changed:\n%s\nwant\n%s", got, vars)
	}
	if got := inodesOf(t, vm.HostKey(), filepath.Join(vm.EtcDir, "hosts"), filepath.Join(vm.EtcDir, "machine-id")); !slices.Equal(got, inodes) {
		t.Errorf("files were rewritten")
	}

	// A new key is written; the host key stays.
	hostKey, _ := os.ReadFile(vm.HostKey())
	keys.Users = []string{testKey(t, 2, "bob")}
	if err := WriteManaged(vm, keys); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(vm.AuthorizedKeys()); !strings.Contains(string(b), " bob\n") {
		t.Errorf("authorized_keys lacks the new key:\n%s", b)
	}
	if b, _ := os.ReadFile(vm.HostKey()); !bytes.Equal(b, hostKey) {
		t.Errorf("the host key changed")
	}
}

// TestWriteManagedKeeps proves that a machine ID the VM has is kept, and
// one the image left empty (or unset) is made.
func TestWriteManagedMachineID(t *testing.T) {
	for _, tt := range []struct{ had, want string }{
		{"", ""}, // made
		{"uninitialized\n", ""},
		{"0123456789abcdef0123456789abcdef\n", "0123456789abcdef0123456789abcdef\n"},
	} {
		vm := testVM(t)
		if err := Seed(vm, makeImage(t)); err != nil {
			t.Fatal(err)
		}
		writeText(t, filepath.Join(vm.EtcDir, "machine-id"), tt.had)
		if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(vm.EtcDir, "machine-id"))
		if tt.want != "" && string(got) != tt.want || tt.want == "" && (string(got) == tt.had || !isMachineID(strings.TrimSpace(string(got)))) {
			t.Errorf("machine-id %q became %q", tt.had, got)
		}
	}
}

// TestWriteManagedEscapes proves that the host never writes through a
// symlink the guest made that leads out of its own directory.
func TestWriteManagedEscapes(t *testing.T) {
	tests := []struct {
		name    string
		link    func(vm *config.VM) string // the symlink the guest makes
		target  string                     // where it points, under OUTSIDE
		wantErr bool
	}{
		{"/etc/ssh", func(vm *config.VM) string { return filepath.Join(vm.EtcDir, "ssh") }, "", true},
		{"/root/.ssh", func(vm *config.VM) string { return filepath.Dir(vm.AuthorizedKeys()) }, "", true},
		{"/root", func(vm *config.VM) string { return filepath.Join(vm.VarDir, "root") }, "", true},
		// Files themselves are replaced, not written through.
		{"/etc/hostname", func(vm *config.VM) string { return filepath.Join(vm.EtcDir, "hostname") }, "file", false},
		{"authorized_keys", func(vm *config.VM) string { return vm.AuthorizedKeys() }, "file", false},
		{"host key", func(vm *config.VM) string { return vm.HostKey() }, "file", true},
		{"machine-id", func(vm *config.VM) string { return filepath.Join(vm.EtcDir, "machine-id") }, "file", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vm := testVM(t)
			if err := Seed(vm, makeImage(t)); err != nil {
				t.Fatal(err)
			}
			outside := t.TempDir()
			writeText(t, filepath.Join(outside, "file"), "the host's")
			link := tt.link(vm)
			mkdir(t, filepath.Dir(link))
			os.RemoveAll(link)
			if err := os.Symlink(filepath.Join(outside, tt.target), link); err != nil {
				t.Fatal(err)
			}
			before := listTree(t, outside)
			err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)})
			t.Logf("WriteManaged: %v", err)
			if (err != nil) != tt.wantErr {
				t.Errorf("WriteManaged: %v, want error: %v", err, tt.wantErr)
			}
			if got := listTree(t, outside); got != before {
				t.Errorf("outside the VM's directory:\n%s\nwant\n%s", got, before)
			}
		})
	}
}

// TestWriteManagedInsideLinks proves that symlinks the guest makes inside
// its own tree are not followed either (Go's os.Root would follow them):
// the host writes only the names it manages, where they are.
func TestWriteManagedInsideLinks(t *testing.T) {
	vm := testVM(t)
	if err := Seed(vm, makeImage(t)); err != nil {
		t.Fatal(err)
	}
	// /etc/ssh -> /etc/alternatives: the host key would land there.
	os.RemoveAll(filepath.Join(vm.EtcDir, "ssh"))
	os.Symlink("alternatives", filepath.Join(vm.EtcDir, "ssh"))
	before := listTree(t, filepath.Join(vm.EtcDir, "alternatives"))
	if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("WriteManaged through /etc/ssh -> alternatives: %v; want a symlink error", err)
	}
	if got := listTree(t, filepath.Join(vm.EtcDir, "alternatives")); got != before {
		t.Errorf("/etc/alternatives changed:\n%s", got)
	}

	// A FIFO for machine-id would block a reader forever; it is replaced.
	os.Remove(filepath.Join(vm.EtcDir, "ssh"))
	os.Remove(filepath.Join(vm.EtcDir, "machine-id"))
	if err := syscall.Mkfifo(filepath.Join(vm.EtcDir, "machine-id"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(vm.EtcDir, "machine-id")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("machine-id is %v, %v; want a regular file", fi.Mode(), err)
	}
}

func TestWriteManagedErrors(t *testing.T) {
	good := testKey(t, 1, AdminComment)
	for _, tt := range []struct {
		name   string
		seeded bool
		keys   Keys
		want   string
	}{
		{"not seeded", false, Keys{Admin: good}, "is not seeded from the image yet"},
		{"no admin key", true, Keys{}, "the admin key is missing"},
		{"bad user key", true, Keys{Admin: good, Users: []string{"ssh-ed25519 AAAA-not-base64 x"}}, `key "ssh-ed25519 AAAA-not-base64 x"`},
		{"two keys in one", true, Keys{Admin: good, Users: []string{good + "\n" + good}}, "more than one line"},
	} {
		vm := testVM(t)
		if tt.seeded {
			if err := Seed(vm, makeImage(t)); err != nil {
				t.Fatal(err)
			}
		}
		if err := WriteManaged(vm, tt.keys); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func TestAdminKey(t *testing.T) {
	testenv.NeedRoot(t)
	host := config.Host{StateDir: t.TempDir()}
	pub, priv, err := AdminKey(host)
	if err != nil {
		t.Fatal(err)
	}
	if priv != host.AdminKey() {
		t.Errorf("private key at %s, want %s", priv, host.AdminKey())
	}
	for path, want := range map[string]fs.FileMode{priv: 0o600, priv + ".pub": 0o644, filepath.Dir(priv): fs.ModeDir | 0o700} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %s", path, fi.Mode(), err, want)
		}
	}
	checkKeyPair(t, priv, pub)

	pub2, _, err := AdminKey(host)
	if err != nil || pub2 != pub {
		t.Errorf("second AdminKey = %q, %v; want the same key %q", pub2, err, pub)
	}
}

// checkKeyPair checks, with OpenSSH's own ssh-keygen, that the private key
// at priv is readable and that pub is its public half.
func checkKeyPair(t *testing.T, priv, pub string) {
	t.Helper()
	testenv.NeedCommands(t, "ssh-keygen")
	out, err := exec.Command("ssh-keygen", "-y", "-f", priv).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y -f %s: %s: %v", priv, out, err)
	}
	got := strings.Fields(string(out))
	want := strings.Fields(pub)
	if len(got) < 2 || len(want) < 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ssh-keygen -y -f %s = %q, want %q", priv, out, pub)
	}
	if b, err := os.ReadFile(priv + ".pub"); err != nil || strings.TrimSpace(string(b)) != pub {
		t.Errorf("%s.pub = %q, %v; want %q", priv, b, err, pub)
	}
}

func inodesOf(t *testing.T, paths ...string) []uint64 {
	t.Helper()
	var inodes []uint64
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		inodes = append(inodes, fi.Sys().(*syscall.Stat_t).Ino)
	}
	return inodes
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeText(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNeverOpensGuestNodes: a device node or a FIFO the guest made where
// the host reads its managed files is refused without being opened, as
// inotify sees it. guest.Dial reads the host key every 500 ms while it
// waits for a guest: it opened a guest-made c 1 3 at
// etc/ssh/ssh_host_ed25519_key.pub (a watchdog device's numbers would
// have started its countdown).
func TestNeverOpensGuestNodes(t *testing.T) {
	vm := testVM(t)
	top := testenv.DeviceDir(t)
	vm.StateDir, vm.EtcDir, vm.VarDir = filepath.Join(top, "vm1"), filepath.Join(top, "vm1", "etc"), filepath.Join(top, "vm1", "var")
	if err := Seed(vm, makeImage(t)); err != nil {
		t.Fatal(err)
	}
	keys := Keys{Admin: testKey(t, 1, AdminComment)}
	if err := WriteManaged(vm, keys); err != nil {
		t.Fatal(err)
	}
	ssh := filepath.Dir(vm.HostKey())
	plant := func(path string, fifo bool) {
		t.Helper()
		os.Remove(path)
		var err error
		if fifo {
			err = syscall.Mkfifo(path, 0o644)
		} else {
			err = syscall.Mknod(path, syscall.S_IFCHR|0o644, int(unix.Mkdev(1, 3)))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, fifo := range []bool{false, true} {
		what := map[bool]string{false: "c 1 3", true: "a FIFO"}[fifo]
		plant(vm.HostKey()+".pub", fifo)
		var err error
		if opened := testenv.Opened(t, ssh, func() { _, err = HostPublicKey(vm) }); len(opened) > 0 {
			t.Errorf("HostPublicKey with %s for the key opened %v", what, opened)
		}
		if !errors.Is(err, safedir.ErrNotRegular) {
			t.Errorf("HostPublicKey with %s for the key: %v; want %v", what, err, safedir.ErrNotRegular)
		}
		// The private key too: WriteManaged refuses to go on.
		plant(vm.HostKey(), fifo)
		if opened := testenv.Opened(t, ssh, func() { err = WriteManaged(vm, keys) }); len(opened) > 0 {
			t.Errorf("WriteManaged with %s for the private key opened %v", what, opened)
		}
		if !errors.Is(err, safedir.ErrNotRegular) {
			t.Errorf("WriteManaged with %s for the private key: %v; want %v", what, err, safedir.ErrNotRegular)
		}
		os.Remove(vm.HostKey())
		// machine-id is replaced, unopened.
		plant(filepath.Join(vm.EtcDir, "machine-id"), fifo)
		if opened := testenv.Opened(t, vm.EtcDir, func() { err = WriteManaged(vm, keys) }); slices.Contains(opened, "machine-id") {
			t.Errorf("WriteManaged with %s for machine-id opened it", what)
		}
		if err != nil {
			t.Errorf("WriteManaged with %s for machine-id: %v", what, err)
		}
	}
}
