package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
)

// TestApplyBuildsImages: plan shows a declared image to build and why,
// apply builds it before any VM, a second plan builds nothing, a changed
// definition builds a new version, and apply removes the old one once no
// VM boots it. The base is a busybox tree (no packages, no network).
func TestApplyBuildsImages(t *testing.T) {
	dir := t.TempDir()
	state, run := filepath.Join(dir, "state"), filepath.Join(dir, "run")
	imagetest.Busybox(t, config.Host{StateDir: state, RunDir: run}, "base")
	body := `[host]
uplink = "eth0"
state_dir = "` + state + `"
run_dir = "` + run + `"

[image.web]
from = "base"
run = ["echo built > /etc/built"]

[vm.web]
subnet = "10.1.0.0/24"
image = "web"
autostart = false
`
	file := writeFile(t, body)
	sb, in := newSandbox(t, file)

	out := mustRun(t, sb.Host, "plan", "-f", file)
	if want := "microvm image build web   # base, 1 command (new); log in " + in.Host.ImageBuildLog("web"); !strings.Contains(out, want) {
		t.Errorf("plan says\n%s\nwant %q", out, want)
	}
	out = mustRun(t, sb.Host, "apply", "-f", file)
	first, err := image.Resolve(in, "web")
	if err != nil || !first.Built(in.Host) {
		t.Fatalf("after apply, web is not built (%v):\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(in.Host.ImageLayer(first.Dir), "etc/built")); err != nil || string(b) != "built\n" {
		t.Errorf("the image's etc/built = %q, %v", b, err)
	}
	if out := mustRun(t, sb.Host, "plan", "-f", file); strings.Contains(out, "image build") {
		t.Errorf("plan after apply builds again:\n%s", out)
	}

	os.WriteFile(file, []byte(strings.Replace(body, `run = ["echo built > /etc/built"]`, `run = ["echo again > /etc/built"]`, 1)), 0o644)
	out = mustRun(t, sb.Host, "plan", "-f", file)
	for _, want := range []string{"microvm image build web   # base, 1 command (commands changed)", "microvm image prune   # " + first.Dir} {
		if !strings.Contains(out, want) {
			t.Errorf("plan after a change says\n%s\nwant %q", out, want)
		}
	}
	out = mustRun(t, sb.Host, "apply", "-f", file)
	if !strings.Contains(out, "image "+first.Dir+" removed") || first.Built(in.Host) {
		t.Errorf("apply kept the old version %s:\n%s", first.Dir, out)
	}
	in2, _ := config.Load(file)
	if second, _ := image.Resolve(in2, "web"); !second.Built(in.Host) || second.Dir == first.Dir {
		t.Errorf("after the change, web is %+v; want a new version, built", second)
	}
	if out := mustRun(t, sb.Host, "image", "list", "-f", file); !strings.Contains(out, "base, 1 command") {
		t.Errorf("image list:\n%s", out)
	}
}
