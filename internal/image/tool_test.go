package image

import (
	"github.com/simple-microvm-infra/microvm/internal/mountinfo"

	"context"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestRunToolMounts proves that mounts a tool makes (debootstrap mounts
// /proc and /sys in its target) are gone when it ends, so that removing a
// failed build's staging directory never deletes through a mount.
func TestRunToolMounts(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	var out strings.Builder
	if err := runTool(t.Context(), &out, "sh", "-c", "mount -t tmpfs tmpfs "+dir+" && grep -c "+dir+" /proc/self/mountinfo"); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if got := strings.TrimSpace(out.String()); got != "1" {
		t.Fatalf("the tool did not see its mount: %q", got)
	}
	if mounts, err := mountinfo.Under(dir); err != nil || len(mounts) > 0 {
		t.Errorf("after the tool: mounts %q, %v; want none", mounts, err)
	}
}

// TestRunToolCancel proves that cancelling kills the tool's children too,
// as dpkg runs under debootstrap.
func TestRunToolCancel(t *testing.T) {
	testenv.NeedRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The child keeps the output open: Run returns only when it is dead.
	err := runTool(ctx, nil, "sh", "-c", "sleep 60 & wait")
	if err == nil {
		t.Fatal("runTool succeeded; want it killed")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("runTool returned after %s; the child outlived the cancel", d)
	}
}
