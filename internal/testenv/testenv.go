// Package testenv says whether a test can run on this machine. Locally, a
// test whose requirement is missing skips; in CI (the CI variable is set) it
// fails instead, so a skip never hides a missing install step. It also holds
// what many packages' tests share: golden files, the built binaries, short
// directories for sockets, a buffer for concurrent writers.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CI reports whether the tests run in CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") != "" }

// Unavailable skips the test locally and fails it in CI.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if CI() {
		t.Fatalf("%s (CI is set: .ci/run must install and start what the tests need)", why)
	}
	t.Skip(why)
}

// NeedRoot requires root, for namespaces, netlink and nftables.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
}

// NeedCommands requires programs on PATH.
func NeedCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Unavailable(t, "needs the "+n+" command")
		}
	}
}

// NetNS creates an empty network namespace for the test and removes it
// when the test ends. Its name is returned.
func NetNS(t testing.TB) string {
	t.Helper()
	NeedRoot(t)
	NeedCommands(t, "ip")
	id := make([]byte, 3)
	rand.Read(id)
	name := "mvmt" + hex.EncodeToString(id)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %s: %v", strings.TrimSpace(string(out)), err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// Binaries builds microvm and microvm-init side by side, statically, as
// `make build` does, and returns the path of microvm.
func Binaries(t testing.TB) string {
	t.Helper()
	NeedCommands(t, "go")
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("finding the module: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/...")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building microvm: %s %v", out, err)
	}
	return filepath.Join(dir, "microvm")
}

// update is the -update flag of every test binary that imports testenv.
var update = flag.Bool("update", false, "rewrite golden files under testdata instead of comparing with them")

// Update reports whether -update was given.
func Update() bool { return *update }

// Golden compares got with the file testdata/name, or rewrites the file
// when the test runs with -update (check the diff before committing it).
func Golden(t testing.TB, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
