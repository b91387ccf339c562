package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

const infra = `
[host]
uplink = "eth0"
state_dir = "/var/lib/microvms"
run_dir = "/run/microvm"
user = "microvm"

[vm.vm1]
subnet = "10.1.0.0/24"

[vm.vm2]
subnet = "10.2.0.0/24"
vcpu = 2
memory = 2048
dns = "9.9.9.9"
`

// TestCommand proves the command line built from the model, flag by flag,
// against golden files; every flag was checked against Cloud Hypervisor's
// --help and source (see the package comment).
func TestCommand(t *testing.T) {
	in, err := config.Parse("infra.toml", []byte(infra))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vm1", "vm2"} {
		t.Run(name, func(t *testing.T) {
			vm, _ := in.VM(name)
			spec := vmm.NewSpec(in.Host, vm, vm.Image)
			if name == "vm1" {
				spec.Console = os.Stderr // any descriptor: the console pipe's, given as fd 3
			}
			cmd, err := New().Command(spec)
			if err != nil {
				t.Fatal(err)
			}
			testenv.Golden(t, name+".golden", testenv.Shell(cmd.Args))
		})
	}
}

// call is one request the fake API received.
type call struct{ Method, Path, Body string }

// fakeAPI serves Cloud Hypervisor's API on a unix socket, as the OpenAPI
// description (vmm/src/api/openapi/cloud-hypervisor.yaml) and the server's
// source (vmm/src/api/http) give it: actions are PUT without a body and
// answer 204, queries are GET and answer 200 with JSON, errors answer a
// JSON array of messages. Cloud Hypervisor cannot run on this machine, so
// this fake is what the client is tested against.
type fakeAPI struct {
	mu     sync.Mutex
	calls  []call
	state  string                // the VM's state, for vm.info
	onCall func(endpoint string) // run after a call is recorded
	errors map[string]int        // endpoint -> status to fail with
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.calls = append(f.calls, call{r.Method, r.URL.Path, string(body)})
	status, failing := f.errors[strings.TrimPrefix(r.URL.Path, "/api/v1/")]
	f.mu.Unlock()
	endpoint := strings.TrimPrefix(r.URL.Path, "/api/v1/")
	if f.onCall != nil {
		defer f.onCall(endpoint)
	}
	w.Header().Set("Content-Type", "application/json")
	want := map[string]string{
		"vmm.ping": "GET", "vm.info": "GET",
		"vm.power-button": "PUT", "vm.shutdown": "PUT", "vmm.shutdown": "PUT",
	}[endpoint]
	switch {
	case want == "":
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `["Not Found"]`)
	case r.Method != want || len(body) > 0 || r.ContentLength > 0:
		// The server answers 400 to a wrong method and to a body on
		// an action.
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `["Bad Request"]`)
	case failing:
		w.WriteHeader(status)
		io.WriteString(w, `["Error from API","The VM could not be shut down","VM is not running"]`)
	case endpoint == "vmm.ping":
		io.WriteString(w, `{"build_version":"v53.0","version":"53.0.0","pid":4242,"features":["kvm","io_uring"]}`)
	case endpoint == "vm.info":
		io.WriteString(w, `{"config":{"cpus":{"boot_vcpus":1,"max_vcpus":1},"payload":{"kernel":"/k"}},"state":"`+f.state+`","memory_actual_size":536870912}`)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func (f *fakeAPI) called() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// serve starts f on a unix socket at path.
func serve(t *testing.T, f *fakeAPI, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
}

// TestClient proves each call's method, path and (empty) body, and how
// answers and errors are decoded.
func TestClient(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "api.sock")
	f := &fakeAPI{state: "Running"}
	serve(t, f, sock)
	c := NewClient(sock, os.Getpid())
	ctx := context.Background()

	ping, err := c.Ping(ctx)
	if err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if ping.Version != "53.0.0" || ping.PID != 4242 || len(ping.Features) != 2 {
		t.Errorf("Ping: got %+v", ping)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.State != "Running" || info.MemoryActualSize != 512<<20 || !json.Valid(info.Config) {
		t.Errorf("Info: got %+v", info)
	}
	for name, do := range map[string]func(context.Context) error{
		"PowerButton": c.PowerButton, "Shutdown": c.Shutdown, "ShutdownVMM": c.ShutdownVMM,
	} {
		if err := do(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	want := map[call]bool{
		{"GET", "/api/v1/vmm.ping", ""}:        true,
		{"GET", "/api/v1/vm.info", ""}:         true,
		{"PUT", "/api/v1/vm.power-button", ""}: true,
		{"PUT", "/api/v1/vm.shutdown", ""}:     true,
		{"PUT", "/api/v1/vmm.shutdown", ""}:    true,
	}
	got := f.called()
	for _, c := range got {
		if !want[c] {
			t.Errorf("unexpected request %+v", c)
		}
		delete(want, c)
	}
	for c := range want {
		t.Errorf("missing request %+v", c)
	}
}

func TestClientErrors(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "api.sock")
	f := &fakeAPI{errors: map[string]int{"vm.shutdown": http.StatusMethodNotAllowed}}
	serve(t, f, sock)
	c := NewClient(sock, os.Getpid())

	err := c.Shutdown(context.Background())
	var apiErr *APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("Shutdown: got %v, want an *APIError", err)
	}
	if apiErr.Status != 405 || len(apiErr.Messages) != 3 || !strings.Contains(err.Error(), "VM is not running") {
		t.Errorf("Shutdown: got %#v (%v)", apiErr, err)
	}

	// Releases before v47 answered errors with plain text.
	old := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "VM is not created")
	})
	sock2 := filepath.Join(testenv.ShortDir(t), "old.sock")
	l, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: old}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	_, err = NewClient(sock2, os.Getpid()).Info(context.Background())
	if !errors.As(err, &apiErr) || apiErr.Status != 404 || apiErr.Messages[0] != "VM is not created" {
		t.Errorf("Info from an old release: got %v", err)
	}

	// Nothing listens.
	if _, err := NewClient(filepath.Join(testenv.ShortDir(t), "none.sock"), 0).Ping(context.Background()); err == nil {
		t.Errorf("Ping without a VMM: no error")
	}
}

// TestShutdownVMMHangup proves a VMM that exits before answering
// vmm.shutdown counts as having done it.
func TestShutdownVMMHangup(t *testing.T) {
	sock := filepath.Join(testenv.ShortDir(t), "api.sock")
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
			buf := make([]byte, 4096)
			c.Read(buf)
			c.Close()
		}
	}()
	if err := NewClient(sock, os.Getpid()).ShutdownVMM(context.Background()); err != nil {
		t.Errorf("ShutdownVMM: %v", err)
	}
}

// TestStopSteps proves the stop sequence against the API: the power button
// first, and, when the guest ignores it, vm.shutdown then vmm.shutdown.
// anyPeer is the backend for a "VMM" (a sleep process) whose API the test
// itself serves: the API's listener is not the VMM's process, so the check
// that it is (vmm.Dial) is left out.
type anyPeer struct{ *Backend }

func (b anyPeer) Ping(ctx context.Context, vm *config.VM, pid int) error {
	return b.Backend.Ping(ctx, vm, 0)
}

func (b anyPeer) StopSteps(vm *config.VM, pid int) []vmm.Step { return b.Backend.StopSteps(vm, 0) }

// The fake API ends the "VMM" (a sleep process) the way Cloud Hypervisor
// exits: when its guest powers off, or on vmm.shutdown.
func TestStopSteps(t *testing.T) {
	tests := []struct {
		name    string
		exitOn  string // the endpoint after which the VMM exits
		vmFails bool   // vm.shutdown answers 405, as when the VM is not running
		want    []string
	}{
		{"guest powers off", "vm.power-button", false, []string{"vm.power-button"}},
		{"guest ignores the button", "vmm.shutdown", false, []string{"vm.power-button", "vm.shutdown", "vmm.shutdown"}},
		{"VM already down", "vmm.shutdown", true, []string{"vm.power-button", "vm.shutdown", "vmm.shutdown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := config.Parse("infra.toml", []byte(`
[host]
uplink = "eth0"
run_dir = "`+testenv.ShortDir(t)+`"
[vm.vm1]
subnet = "10.1.0.0/24"
`))
			if err != nil {
				t.Fatal(err)
			}
			vm, _ := in.VM("vm1")
			os.MkdirAll(vm.VMMDir(), 0o755)
			b := anyPeer{&Backend{Grace: 300 * time.Millisecond}}
			m, err := vmm.Start(b, vm, exec.Command("sleep", "60"))
			if err != nil {
				t.Fatal(err)
			}
			f := &fakeAPI{state: "Running", onCall: func(endpoint string) {
				if endpoint == tt.exitOn {
					syscall.Kill(m.Pid(), syscall.SIGTERM)
				}
			}}
			if tt.vmFails {
				f.errors = map[string]int{"vm.shutdown": http.StatusMethodNotAllowed}
			}
			serve(t, f, vm.ControlSocket())
			if err := m.Ready(context.Background()); err != nil {
				t.Fatalf("Ready: %v", err)
			}
			if err := m.Stop(context.Background()); err != nil {
				t.Errorf("Stop: %v", err)
			}
			var got []string
			for _, c := range f.called() {
				if c.Method != "PUT" {
					continue // Ready's pings
				}
				got = append(got, strings.TrimPrefix(c.Path, "/api/v1/"))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("requests: got %v, want %v", got, tt.want)
			}
		})
	}
}

// countConn counts the bytes read through it.
type countConn struct {
	net.Conn
	n *int64
}

func (c countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	*c.n += int64(n)
	return n, err
}

// TestClientBounded: a VMM whose API answers with endless headers or an
// endless body, as one a guest broke into could, fails the call with a
// clear error once the client has read its bound.
func TestClientBounded(t *testing.T) {
	chunk := strings.Repeat("A", 32<<10)
	for _, tt := range []struct {
		name, first, more, want string
		limit                   int64
	}{
		{"headers", "HTTP/1.1 200 OK\r\nX-Endless: ", chunk, "exceeded", maxHeader + 64<<10},
		{"body", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", fmt.Sprintf("%x\r\n%s\r\n", len(chunk), chunk), "an answer longer than 1048576 bytes", maxAnswer + 64<<10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(testenv.ShortDir(t), "api.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						c.Read(make([]byte, 4096)) // the request
						if _, err := io.WriteString(c, tt.first); err != nil {
							return
						}
						for {
							if _, err := io.WriteString(c, tt.more); err != nil {
								return
							}
						}
					}()
				}
			}()
			c := NewClient(sock, os.Getpid())
			var n int64
			tr := c.http.Transport.(*http.Transport)
			dial := tr.DialContext
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return countConn{conn, &n}, nil
			}
			_, err = c.Info(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Info: %v; want an error saying %q", err, tt.want)
			}
			if n > tt.limit {
				t.Errorf("read %d bytes, want at most %d", n, tt.limit)
			}
		})
	}
}
