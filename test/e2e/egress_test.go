package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/check"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/guest"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestEgressGuest boots a real guest with an egress list (egw1: a name no
// other test's VM has) and microvm host beside it, as on a real host: from
// inside the guest, its own resolver (its gateway, which resolv.conf
// names) answers its name, which it then reaches over IPv4 and IPv6, and
// nothing else: not another name, not an address, not a DNS server.
func TestEgressGuest(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go")
	host := imagetest.Debian(t)
	run := testenv.RunDir(t, "mvt")
	src := fmt.Sprintf(`[host]
uplink = "eth0"
state_dir = %q
run_dir = %q
accel = "tcg"
[host.tailscale]
enabled = false
[defaults]
hypervisor = "qemu"
vcpu = 1
memory = 512
[vm.egw1]
subnet = "10.91.0.0/24"
dns = "%s"
egress = ["%s"]
`, host.StateDir, run, sandbox.DNSAddr, sandbox.ListedName)
	file := filepath.Join(t.TempDir(), "infra.toml")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := in.VM("egw1")
	if err := os.RemoveAll(vm.StateDir); err != nil {
		t.Fatal(err)
	}
	bin := testenv.Binaries(t)
	sb := sandboxtest.New(t, in)
	if out, err := sandbox.Command(sb.Host, bin, "apply", "--host-only", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("apply: %s %v", out, err)
	}
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	var log testenv.SyncBuffer
	keeper := sandbox.Command(sb.Host, bin, "host", "-f", file)
	keeper.Stdout, keeper.Stderr = &log, &log
	if err := keeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		keeper.Process.Signal(syscall.SIGTERM)
		keeper.Wait()
		t.Logf("microvm host's log:\n%s", log.String())
	})

	_, clients := sandboxtest.Boot(t, sb, in, bin, file, t.TempDir())
	c := clients["egw1"]
	if got := mustRun(t, c, "grep ^nameserver /etc/resolv.conf"); strings.TrimSpace(got) != "nameserver "+vm.Gateway.String() {
		t.Errorf("the guest's resolv.conf: %q, want its gateway %s", got, vm.Gateway)
	}
	// The host's answers may take a moment after boot: the resolver
	// starts with microvm host, which the guest does not wait for.
	for began := time.Now(); ; time.Sleep(time.Second) {
		if out, code, _ := guest.Run(c, "getent ahostsv4 "+sandbox.ListedName); code == 0 {
			t.Logf("the guest resolved %s %s after boot: %s", sandbox.ListedName, time.Since(began).Round(time.Second), strings.Fields(out)[0])
			break
		}
		if time.Since(began) > time.Minute {
			t.Fatalf("the guest cannot resolve %s a minute after boot", sandbox.ListedName)
		}
	}
	r := check.Run(in, check.NewGuestProber(clients, sandbox.Prober{S: sb}, guest.Run), sb.Target())
	var b bytes.Buffer
	r.Print(&b)
	t.Logf("measured from inside the guest:\n%s", b.String())
	if !r.OK() {
		t.Error("a promise does not hold (table above)")
	}
	for _, row := range []string{"egw1", "egw1" + check.Suffix6} {
		if got := r.Cells[row]["internet"].Text; !strings.HasPrefix(got, "names only: "+sandbox.ListedName+" ok, seen as ") {
			t.Errorf("%s to the internet: %q, want names only", row, got)
		}
	}
	if t.Failed() {
		out, _ := sandbox.Command(sb.Host, "nft", "list", "table", "inet", "microvm").CombinedOutput()
		t.Logf("the table:\n%s", out)
	}
}
