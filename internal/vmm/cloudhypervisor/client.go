package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// Client talks to Cloud Hypervisor's REST API on its unix socket
// (--api-socket). The paths and bodies are those of Cloud Hypervisor's
// OpenAPI description (vmm/src/api/openapi/cloud-hypervisor.yaml).
type Client struct {
	http *http.Client
}

// NewClient returns a client of the API on the unix socket at path, served
// by the Cloud Hypervisor process pid (see vmm.Dial).
func NewClient(path string, pid int) *Client {
	return &Client{http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return vmm.Dial(ctx, path, pid)
		},
		// One request per connection, as ch-remote does: the API server
		// serves a few connections at a time, and a stopping VMM closes
		// idle ones under a client's feet.
		DisableKeepAlives: true,
		// A VMM a guest broke into answers what it likes: its headers
		// are bounded here, its bodies by maxAnswer.
		MaxResponseHeaderBytes: maxHeader,
	}}}
}

// The bounds of an answer: Cloud Hypervisor's are a few kilobytes (vm.info
// with the VM's whole configuration is the largest).
const (
	maxHeader = 64 << 10
	maxAnswer = 1 << 20
)

// VmmPing is the answer of GET /vmm.ping (VmmPingResponse).
type VmmPing struct {
	BuildVersion string   `json:"build_version"`
	Version      string   `json:"version"`
	PID          int64    `json:"pid"`
	Features     []string `json:"features"`
}

// VmInfo is the answer of GET /vm.info. Config is kept as JSON: the program
// reads only State, and VmConfig changes between releases.
type VmInfo struct {
	Config           json.RawMessage `json:"config"`
	State            string          `json:"state"` // Created, Running, Shutdown, Paused, BreakPoint
	MemoryActualSize int64           `json:"memory_actual_size"`
}

// APIError is an answer other than success. Cloud Hypervisor sends the chain
// of error messages as a JSON array of strings.
type APIError struct {
	Method, Path string
	Status       int
	Messages     []string
}

func (e *APIError) Error() string {
	msg := strings.Join(e.Messages, ": ")
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// Ping returns the VMM's version; it answers as soon as the API is up.
func (c *Client) Ping(ctx context.Context) (VmmPing, error) {
	var p VmmPing
	err := c.do(ctx, http.MethodGet, "vmm.ping", &p)
	return p, err
}

// Info returns the VM's state and configuration.
func (c *Client) Info(ctx context.Context) (VmInfo, error) {
	var i VmInfo
	err := c.do(ctx, http.MethodGet, "vm.info", &i)
	return i, err
}

// PowerButton presses the VM's ACPI power button. The guest decides what to
// do: a guest where systemd-logind (or acpid) runs powers off; one without
// ignores it.
func (c *Client) PowerButton(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "vm.power-button", nil)
}

// Shutdown stops the VM at once, like pulling its power cord. The VMM
// process keeps running.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "vm.shutdown", nil)
}

// ShutdownVMM makes the VMM process exit.
func (c *Client) ShutdownVMM(ctx context.Context) error {
	err := c.do(ctx, http.MethodPut, "vmm.shutdown", nil)
	// A VMM that exits before its answer is sent has done what was asked.
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	return err
}

// do sends one request without a body (the action endpoints answer 400 to
// any body) and decodes a JSON answer into out, if out is not nil.
func (c *Client) do(ctx context.Context, method, endpoint string, out any) error {
	path := "/api/v1/" + endpoint
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, nil)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, path, err)
	}
	if len(body) > maxAnswer {
		return fmt.Errorf("%s %s: an answer longer than %d bytes", method, path, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		e := &APIError{Method: method, Path: path, Status: resp.StatusCode}
		if json.Unmarshal(body, &e.Messages) != nil && len(body) > 0 {
			// Releases before v47 answered with plain text.
			e.Messages = []string{strings.TrimSpace(string(body))}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: got %d, want 200 and a JSON answer", method, path, resp.StatusCode)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
	}
	return nil
}
