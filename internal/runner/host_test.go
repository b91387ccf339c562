package runner

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/tailscale/tailscaletest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestOnlyWhatAVMNeedsBlocksIt applies the host part of two VMs in a
// sandbox, next to a tailscaled (the fake) that refuses every change, and
// checks what stops a VM's start: its own bridge, TAP and the firewall do;
// Tailscale (refusing, not answering, routes not advertised) and another
// VM's network do not, and are warned about.
func TestOnlyWhatAVMNeedsBlocksIt(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "useradd")
	dir := testenv.ShortDir(t)
	socket := filepath.Join(dir, "ts.sock")
	fake := tailscaletest.Start(t, socket, "Running", []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}, nil)
	fake.Refuse("cannot save the settings: read-only file system")
	model := func(socket string) *config.Infra {
		src := fmt.Sprintf("[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\n[host.tailscale]\nenabled = true\nsocket = %q\n"+
			"[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n[vm.vm2]\nsubnet = \"10.2.0.0/24\"\n", dir+"/state", dir+"/run", socket)
		file := filepath.Join(dir, "infra.toml")
		os.WriteFile(file, []byte(src), 0o644)
		in, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	in := model(socket)
	vm1, _ := in.VM("vm1")
	vm2, _ := in.VM("vm2")
	// An image, as far as checkHost looks.
	os.MkdirAll(in.Host.ImageRootfs(vm1.Image), 0o755)
	os.WriteFile(in.Host.ImageVmlinux(vm1.Image), nil, 0o644)
	sb := sandboxtest.New(t, in)
	do := func(f func()) {
		t.Helper()
		if err := sandbox.Do(sb.Host, func() error { f(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	do(func() {
		p, err := plan.Host(in)
		if err != nil {
			t.Fatal(err)
		}
		err = p.Apply(io.Discard)
		var skipped plan.Skipped
		if !errors.As(err, &skipped) || !strings.Contains(err.Error(), "read-only file system") {
			t.Fatalf("apply next to a tailscaled that refuses: %v; want the rest applied and the refusal reported", err)
		}
	})

	ip := func(args ...string) {
		t.Helper()
		if out, err := sandbox.Command(sb.Host, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %s %v", strings.Join(args, " "), out, err)
		}
	}
	steps := []struct {
		name     string
		in       *config.Infra
		before   func()
		vm       *config.VM
		err      string // "" for a start
		warnings string
	}{
		{"tailscaled refuses the routes", in, nil, vm1, "", "tailscale --socket=" + socket + " set --advertise-routes=192.168.1.0/24,10.1.0.0/24,10.2.0.0/24"},
		{"tailscaled does not answer", model(filepath.Join(dir, "none.sock")), nil, vm1, "", "tailscaled does not answer on"},
		{"another VM's bridge is gone", in, func() { ip("link", "del", vm2.Bridge) }, vm1, "", "ip link add br-vm2 group 7173741 type bridge"},
		{"its own bridge is gone", in, nil, vm2, "the host part vm2 needs is not applied", ""},
		{"its own TAP is down", in, func() { ip("link", "set", vm1.TAP, "down") }, vm1, `"ip link set vm-vm1 up"`, ""},
		{"the firewall is gone", in, func() {
			ip("link", "set", vm1.TAP, "up")
			if out, err := sandbox.Command(sb.Host, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
				t.Fatalf("%s %v", out, err)
			}
		}, vm1, "create table inet microvm", ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.before != nil {
				st.before()
			}
			vm, _ := st.in.VM(st.vm.Name)
			do(func() {
				err := checkHost(st.in, vm)
				switch {
				case st.err == "" && err != nil:
					t.Errorf("start refused: %v", err)
				case st.err != "" && (err == nil || !strings.Contains(err.Error(), st.err)):
					t.Errorf("got %v, want a refusal with %q", err, st.err)
				}
				if st.warnings != "" {
					if got := strings.Join(hostWarnings(st.in, vm), "\n"); !strings.Contains(got, st.warnings) {
						t.Errorf("warnings lack %q:\n%s", st.warnings, got)
					}
				}
			})
		})
	}
}
