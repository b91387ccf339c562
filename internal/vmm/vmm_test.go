package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

func parse(t *testing.T, src string) *config.Infra {
	t.Helper()
	in, err := config.Parse("infra.toml", []byte(src))
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	return in
}

const infra = `
[host]
uplink = "eth0"

[vm.vm1]
subnet = "10.1.0.0/24"

[vm.db]
subnet = "172.20.0.0/16"
dns = "9.9.9.9"
`

// TestDescriptors: the VMM finds each descriptor it is given where its
// command line says: the TAP's queues from 3, then the console, then the
// volumes.
func TestDescriptors(t *testing.T) {
	files := make([]*os.File, 5)
	for i := range files {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[i] = f
	}
	for _, tc := range []struct {
		name    string
		spec    Spec
		console int
		volumes []string
	}{
		{"all", Spec{TAP: files[:2], Console: files[2], Volumes: []Volume{{"a", files[3]}, {"b", files[4]}}}, 5, []string{"/proc/self/fd/6", "/proc/self/fd/7"}},
		{"no console", Spec{TAP: files[:2], Volumes: []Volume{{"a", files[3]}}}, -1, []string{"/proc/self/fd/5"}},
		{"no volumes", Spec{TAP: files[:1], Console: files[2]}, 4, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := NewCmd("/bin/true", "", tc.spec, nil)
			if got := tc.spec.ConsoleFd(); got != tc.console {
				t.Errorf("ConsoleFd() = %d, want %d", got, tc.console)
			}
			if got := tc.spec.VolumePaths(); strings.Join(got, " ") != strings.Join(tc.volumes, " ") {
				t.Errorf("VolumePaths() = %v, want %v", got, tc.volumes)
			}
			// Descriptor N is ExtraFiles[N-3].
			at := func(fd int) *os.File { return cmd.ExtraFiles[fd-3] }
			if tc.console >= 0 && at(tc.console) != tc.spec.Console {
				t.Errorf("descriptor %d is not the console", tc.console)
			}
			for i, p := range tc.volumes {
				var fd int
				fmt.Sscanf(p, "/proc/self/fd/%d", &fd)
				if fd-3 >= len(cmd.ExtraFiles) || at(fd) != tc.spec.Volumes[i].File {
					t.Errorf("%s is not volume %s", p, tc.spec.Volumes[i].Name)
				}
			}
		})
	}
}

// TestCmdline proves the kernel command line carries the model's values in
// the documented form, which cmd/microvm-init parses.
func TestCmdline(t *testing.T) {
	in := parse(t, infra)
	tests := []struct {
		vm    string
		extra []string
		want  string
	}{
		{"vm1", nil, "console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=vm1 microvm.ip=10.1.0.2/24 microvm.gw=10.1.0.1 microvm.dns=1.1.1.1 microvm.ip6=fddc:b7cf:609b:100::2/64 microvm.gw6=fddc:b7cf:609b:100::1"},
		{"db", nil, "console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=db microvm.ip=172.20.0.2/16 microvm.gw=172.20.0.1 microvm.dns=9.9.9.9 microvm.ip6=fddc:b7cf:609b:1400::2/64 microvm.gw6=fddc:b7cf:609b:1400::1"},
		{"vm1", []string{"tsc_early_khz=2600000"}, "console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=vm1 microvm.ip=10.1.0.2/24 microvm.gw=10.1.0.1 microvm.dns=1.1.1.1 microvm.ip6=fddc:b7cf:609b:100::2/64 microvm.gw6=fddc:b7cf:609b:100::1 tsc_early_khz=2600000"},
	}
	for _, tt := range tests {
		vm, _ := in.VM(tt.vm)
		if got := Cmdline(vm, tt.extra...); got != tt.want {
			t.Errorf("Cmdline(%s, %q):\ngot  %s\nwant %s", tt.vm, tt.extra, got, tt.want)
		}
	}
	// Without IPv6 the line has no IPv6 words; with an egress list the
	// guest's resolver is its gateway, where the host answers.
	v4 := parse(t, "[host]\nuplink = \"eth0\"\nipv6 = false\n[vm.web]\nsubnet = \"10.5.0.0/24\"\negress = [\"deb.debian.org\"]\n")
	web, _ := v4.VM("web")
	if got, want := Cmdline(web), "console=ttyS0 quiet i8042.noaux reboot=t panic=-1 microvm.name=web microvm.ip=10.5.0.2/24 microvm.gw=10.5.0.1 microvm.dns=10.5.0.1"; got != want {
		t.Errorf("Cmdline(web):\ngot  %s\nwant %s", got, want)
	}
}

func TestNewSpec(t *testing.T) {
	in := parse(t, infra)
	vm, _ := in.VM("vm1")
	s := NewSpec(in.Host, vm, vm.Image)
	if s.Kernel != "/var/lib/microvms/images/debian/vmlinux" || s.Initramfs != "/run/microvm/images/debian.initramfs" {
		t.Errorf("NewSpec: kernel %s, initramfs %s", s.Kernel, s.Initramfs)
	}
	var tags []string
	for _, sh := range s.Shares {
		tags = append(tags, sh.Tag)
	}
	if got, want := strings.Join(tags, " "), "image etc var"; got != want {
		t.Errorf("NewSpec: shares %s, want %s", got, want)
	}
	if err := s.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
}

// TestSpecCheckComma proves a path that would break a VMM's option syntax
// is refused instead of silently splitting an option.
func TestSpecCheckComma(t *testing.T) {
	in := parse(t, `
[host]
uplink = "eth0"
[vm.vm1]
subnet = "10.1.0.0/24"
`)
	// infra.toml refuses such a run_dir; Check guards the VMMs' syntax
	// whatever model it is given.
	in.Relocate(in.Host.StateDir, "/run/micro,vm")
	vm, _ := in.VM("vm1")
	err := NewSpec(in.Host, vm, vm.Image).Check()
	if err == nil || !strings.Contains(err.Error(), "comma") {
		t.Errorf("Check: got %v, want an error about the comma", err)
	}
}

// fake is a backend whose steps are given by the test, around a "VMM" that
// is a sleep process.
type fake struct {
	mu    sync.Mutex
	calls []string
	steps []Step
	pings int // Ping fails this many times, then succeeds
}

func (f *fake) Command(Spec) (*exec.Cmd, error) { return exec.Command("sleep", "60"), nil }

func (f *fake) Ping(context.Context, *config.VM, int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pings > 0 {
		f.pings--
		return errors.New("not yet")
	}
	return nil
}

func (f *fake) StopSteps(*config.VM, int) []Step { return f.steps }

func (f *fake) record(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
}

// step returns a step that records its name and, if it works, ends the
// process the way a VMM that obeys would: it exits.
func (f *fake) step(name string, works bool, m **Machine) Step {
	return Step{Name: name, Grace: 200 * time.Millisecond, Do: func(ctx context.Context) error {
		f.record(name)
		if works {
			(*m).cmd.Process.Signal(syscall.SIGTERM)
			return nil
		}
		return errors.New(name + " ignored")
	}}
}

func testVM(t *testing.T) *config.VM {
	t.Helper()
	in := parse(t, `
[host]
uplink = "eth0"
run_dir = "`+testenv.ShortDir(t)+`"
[vm.vm1]
subnet = "10.1.0.0/24"
`)
	vm, _ := in.VM("vm1")
	if err := os.MkdirAll(vm.VMMDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	return vm
}

// TestStop proves the escalation: steps run gentlest first, the first that
// makes the VMM exit ends the stop, and a VMM that ignores every step is
// killed.
func TestStop(t *testing.T) {
	tests := []struct {
		name      string
		works     []bool // per step
		wantCalls string
		wantErr   error
		graceful  bool // the first step stopped it
	}{
		{"guest obeys", []bool{true, true}, "gentle", nil, true},
		{"guest ignores, VMM obeys", []bool{false, true}, "gentle hard", nil, false},
		{"nothing works", []bool{false, false}, "gentle hard", ErrKilled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{}
			var m *Machine
			f.steps = []Step{f.step("gentle", tt.works[0], &m), f.step("hard", tt.works[1], &m)}
			vm := testVM(t)
			cmd, _ := f.Command(Spec{VM: vm})
			var err error
			m, err = Start(f, vm, cmd)
			if err != nil {
				t.Fatal(err)
			}
			var logged []string
			m.Logf = func(format string, args ...any) { logged = append(logged, format) }
			err = m.Stop(context.Background())
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("Stop: got %v, want %v", err, tt.wantErr)
			}
			if got := strings.Join(f.calls, " "); got != tt.wantCalls {
				t.Errorf("steps run: got %q, want %q", got, tt.wantCalls)
			}
			if m.Graceful != tt.graceful {
				t.Errorf("Graceful: got %v, want %v", m.Graceful, tt.graceful)
			}
			select {
			case <-m.Done():
			default:
				t.Errorf("Stop returned with the process still running")
			}
			if len(logged) == 0 {
				t.Errorf("Stop logged nothing")
			}
		})
	}
}

// TestStopContext proves a cancelled context skips the remaining grace and
// kills at once.
func TestStopContext(t *testing.T) {
	f := &fake{}
	var m *Machine
	f.steps = []Step{f.step("gentle", false, &m)}
	f.steps[0].Grace = time.Hour
	vm := testVM(t)
	cmd, _ := f.Command(Spec{VM: vm})
	m, err := Start(f, vm, cmd)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := m.Stop(ctx); !errors.Is(err, ErrKilled) {
		t.Errorf("Stop: got %v, want ErrKilled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Stop took %v despite the context's 200ms", d)
	}
}

// TestStopExited proves stopping a VMM that has already exited runs no step.
func TestStopExited(t *testing.T) {
	f := &fake{}
	var m *Machine
	f.steps = []Step{f.step("gentle", true, &m)}
	vm := testVM(t)
	m, err := Start(f, vm, exec.Command("true"))
	if err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if err := m.Stop(context.Background()); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if len(f.calls) != 0 {
		t.Errorf("Stop ran %v on an exited VMM", f.calls)
	}
}

// TestReady proves Ready waits for the control socket to answer, and
// reports a VMM that exits instead.
func TestReady(t *testing.T) {
	vm := testVM(t)
	f := &fake{pings: 3}
	cmd, _ := f.Command(Spec{VM: vm})
	m, err := Start(f, vm, cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}

	f = &fake{pings: 1 << 30}
	m, err = Start(f, vm, exec.Command("false"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(ctx); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Ready with a VMM that exits: got %v, want an error saying it exited", err)
	}
}

// TestStartSocket proves Start removes a stale control socket but refuses
// to start a VM whose control socket answers: its VMM is running.
func TestStartSocket(t *testing.T) {
	vm := testVM(t)
	f := &fake{}

	l, err := net.Listen("unix", vm.ControlSocket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Start(f, vm, exec.Command("true")); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("Start with a live control socket: got %v, want an error", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the socket file stays, as after a crash

	if _, err := os.Stat(vm.ControlSocket()); err != nil {
		t.Fatalf("the stale socket should exist: %v", err)
	}
	m, err := Start(f, vm, exec.Command("true"))
	if err != nil {
		t.Fatalf("Start with a stale socket: %v", err)
	}
	m.Wait()
	if _, err := os.Stat(vm.ControlSocket()); err == nil {
		t.Errorf("Start left the stale socket %s", filepath.Base(vm.ControlSocket()))
	}
}

// TestDial: root talks to a VMM's socket only if it is a socket (not a
// symlink the VMM's user put in its place) and the expected process
// listens on it.
func TestDial(t *testing.T) {
	dir := testenv.ShortDir(t)
	sock := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	other := filepath.Join(dir, "other.sock")
	os.Symlink(sock, other)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	ctx := context.Background()
	if c, err := Dial(ctx, sock, os.Getpid()); err != nil {
		t.Errorf("Dial to the expected listener: %v", err)
	} else {
		c.Close()
	}
	for _, tt := range []struct {
		name, path string
		pid        int
		want       string
	}{
		{"another process listens", sock, os.Getpid() + 1, "not the VMM"},
		{"a symlink to a socket", other, os.Getpid(), "not a socket"},
		{"a regular file", file, os.Getpid(), "not a socket"},
	} {
		if c, err := Dial(ctx, tt.path, tt.pid); err == nil || !strings.Contains(err.Error(), tt.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("%s: Dial: %v; want an error with %q", tt.name, err, tt.want)
		}
	}
}

// TestNoNewPrivs: the VMM runs with no_new_privs set, and the caller's
// own threads do not.
func TestNoNewPrivs(t *testing.T) {
	vm := testVM(t)
	cmd := exec.Command("grep", "NoNewPrivs", "/proc/self/status")
	var out strings.Builder
	cmd.Stdout = &out
	m, err := Start(&fake{}, vm, cmd)
	if err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if got := strings.TrimSpace(out.String()); got != "NoNewPrivs:\t1" {
		t.Errorf("the VMM's status says %q, want NoNewPrivs:\t1", got)
	}
	// The thread that started it is gone (the main thread never is);
	// others start programs as usual.
	if b, _ := os.ReadFile("/proc/self/status"); !strings.Contains(string(b), "NoNewPrivs:\t0") {
		t.Errorf("the caller's main thread has no_new_privs set")
	}
	for range 5 {
		out, _ := exec.Command("grep", "NoNewPrivs", "/proc/self/status").Output()
		if got := strings.TrimSpace(string(out)); got != "NoNewPrivs:\t0" {
			t.Errorf("a later child says %q: no_new_privs leaked to the caller", got)
		}
	}
}
