// Package fleettest runs a real etcd cluster for tests: Debian's etcd
// server (package etcd-server), one process per member, each inside a
// network namespace the caller made (nsenter --net), with TLS and client
// certificates on its client and peer URLs, as a fleet runs it
// (internal/pki issues the certificates).
//
// Network safety: the members listen only inside those namespaces, and the
// test reaches them only from inside too. A socket belongs to the
// namespace it was made in for its whole life, so Client dials each
// connection with its thread briefly inside the namespace (sandbox.Do)
// and gRPC then uses it from any goroutine: no listener, route or
// address is ever added to the machine's own namespace. Members in one
// namespace can each take an address of 127.0.0.0/8 (127.0.0.11,
// 127.0.0.12, ...): all of it is on lo, so they reach each other with no
// further setup once lo is up.
package fleettest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/simple-microvm-infra/microvm/internal/fleet"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// The ports every member listens on, at its own address.
const (
	ClientPort = 2379
	PeerPort   = 2380
)

// Timeout is how long Start and Restart wait for the cluster to be healthy.
const Timeout = 30 * time.Second

// Member is one etcd member: its certificate and key are CERTS/NAME.crt and
// NAME.key (pki.CA.Member); it listens on IP inside the network namespace
// Netns (a name under /run/netns). Its certificate names IP, and every
// address its connections to the other members come from: etcd checks a
// peer's certificate against its source address.
type Member struct {
	Name  string
	IP    netip.Addr
	Netns string
}

func (m Member) clientURL() string {
	return "https://" + netip.AddrPortFrom(m.IP, ClientPort).String()
}

func (m Member) peerURL() string {
	return "https://" + netip.AddrPortFrom(m.IP, PeerPort).String()
}

// Cluster is a running etcd cluster; it stops when the test ends (Start),
// or when its program calls Stop (Launch).
type Cluster struct {
	t       testing.TB // nil for a cluster of Launch
	certs   string
	members []Member
	dir     string                   // data dirs and logs, DIR/NAME and DIR/NAME.log
	procs   map[string]*exec.Cmd     // running members
	ids     map[string]uint64        // members' IDs, as they answered
	done    map[string]chan struct{} // closed when a member's process has exited
}

// Start starts members as a new cluster with the certificates in certs
// (which holds ca.crt) and waits until it has a leader that every member
// knows.
func Start(t testing.TB, certs string, members []Member) *Cluster {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "etcd", "nsenter")
	c := newCluster(certs, t.TempDir(), members)
	c.t = t
	t.Cleanup(c.Stop)
	if err := c.launch(); err != nil {
		t.Fatal(err)
	}
	return c
}

// Launch starts members as Start does, for a program that is not a test
// (the benchmarks): their data dirs and logs go to dir, an error is
// returned instead of failing a test, and the caller ends the cluster with
// Stop (also after an error). Kill, Restart and RestartAll are for
// clusters of Start.
func Launch(certs, dir string, members []Member) (*Cluster, error) {
	c := newCluster(certs, dir, members)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c, err
	}
	return c, c.launch()
}

func newCluster(certs, dir string, members []Member) *Cluster {
	return &Cluster{certs: certs, members: members, dir: dir,
		procs: map[string]*exec.Cmd{}, ids: map[string]uint64{}, done: map[string]chan struct{}{}}
}

func (c *Cluster) launch() error {
	for _, m := range c.members {
		if err := c.start(m); err != nil {
			return err
		}
	}
	return c.waitHealthy(c.members)
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL())
	}
	return eps
}

// Kill ends member name at once (SIGKILL), as a crash or a power cut
// would. If the others are a quorum, it waits until they have a leader
// among them: until then etcd would let a write time out (a proposal sent
// to the dead leader is lost) rather than fail it.
func (c *Cluster) Kill(name string) {
	c.t.Helper()
	cmd := c.procs[name]
	if cmd == nil {
		c.t.Fatalf("etcd member %s is not running", name)
	}
	cmd.Process.Kill()
	<-c.done[name]
	delete(c.procs, name)
	var rest []Member
	for _, m := range c.members {
		if c.procs[m.Name] != nil {
			rest = append(rest, m)
		}
	}
	if len(rest) > len(c.members)/2 {
		if err := c.waitHealthy(rest); err != nil {
			c.t.Fatal(err)
		}
	}
}

// Restart starts member name again on its data and waits until it is back
// in the cluster.
func (c *Cluster) Restart(name string) {
	c.t.Helper()
	if c.procs[name] != nil {
		c.t.Fatalf("etcd member %s is running: Kill it first", name)
	}
	m := c.member(name)
	if err := c.start(m); err != nil {
		c.t.Fatal(err)
	}
	if err := c.waitHealthy([]Member{m}); err != nil {
		c.t.Fatal(err)
	}
}

// RestartAll starts every member that is not running again, together
// (after all were killed, none has a quorum alone), and waits until the
// cluster is healthy.
func (c *Cluster) RestartAll() {
	c.t.Helper()
	var again []Member
	for _, m := range c.members {
		if c.procs[m.Name] == nil {
			if err := c.start(m); err != nil {
				c.t.Fatal(err)
			}
			again = append(again, m)
		}
	}
	if err := c.waitHealthy(again); err != nil {
		c.t.Fatal(err)
	}
}

// Stop ends every member (SIGTERM, then SIGKILL after 5 s). The test's
// cleanup calls it; calling it earlier is fine.
func (c *Cluster) Stop() {
	for _, cmd := range c.procs {
		cmd.Process.Signal(syscall.SIGTERM)
	}
	for name, cmd := range c.procs {
		select {
		case <-c.done[name]:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-c.done[name]
		}
		delete(c.procs, name)
	}
	if c.t != nil && c.t.Failed() {
		for _, m := range c.members {
			if b, err := os.ReadFile(c.log(m.Name)); err == nil {
				c.t.Logf("etcd member %s's log, last lines:\n%s", m.Name, tail(string(b), 30))
			}
		}
	}
}

func (c *Cluster) member(name string) Member {
	c.t.Helper()
	for _, m := range c.members {
		if m.Name == name {
			return m
		}
	}
	c.t.Fatalf("no etcd member %s", name)
	return Member{}
}

// down says whether id is a member that is not running.
func (c *Cluster) down(id uint64) bool {
	for name, mid := range c.ids {
		if mid == id {
			return c.procs[name] == nil
		}
	}
	return false
}

func (c *Cluster) log(name string) string { return filepath.Join(c.dir, name+".log") }

func (c *Cluster) start(m Member) error {
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.Name+"="+o.peerURL())
	}
	ca := filepath.Join(c.certs, "ca.crt")
	crt := filepath.Join(c.certs, m.Name+".crt")
	key := filepath.Join(c.certs, m.Name+".key")
	args := []string{"--net=" + filepath.Join("/run/netns", m.Netns), "--", "etcd",
		"--name", m.Name,
		"--data-dir", filepath.Join(c.dir, m.Name),
		"--listen-client-urls", m.clientURL(),
		"--advertise-client-urls", m.clientURL(),
		"--listen-peer-urls", m.peerURL(),
		"--initial-advertise-peer-urls", m.peerURL(),
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-state", "new", // ignored once the data dir exists (Restart)
		"--initial-cluster-token", "fleettest",
		"--client-cert-auth", "--trusted-ca-file", ca, "--cert-file", crt, "--key-file", key,
		"--peer-client-cert-auth", "--peer-trusted-ca-file", ca, "--peer-cert-file", crt, "--peer-key-file", key,
		"--logger", "zap", "--log-outputs", "stderr",
	}
	logf, err := os.OpenFile(c.log(m.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A member must not outlive a test binary that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting etcd member %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c.procs[m.Name], c.done[m.Name] = cmd, done
	return nil
}

// waitHealthy waits until each of members answers, from its own
// namespace with its own certificate, and knows a leader that is not a
// member known to be down.
func (c *Cluster) waitHealthy(members []Member) error {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for _, m := range members {
		cli, err := NewClient(m.Netns, []string{m.clientURL()}, fleet.Certs{Dir: c.certs, Name: m.Name})
		if err != nil {
			return err
		}
		var last error
		for {
			select {
			case <-c.done[m.Name]:
				cli.Close()
				return fmt.Errorf("etcd member %s exited:\n%s", m.Name, tail(read(c.log(m.Name)), 30))
			default:
			}
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := cli.Status(rctx, m.clientURL())
			rcancel()
			if err == nil {
				c.ids[m.Name] = st.Header.MemberId
				if st.Leader != 0 && !c.down(st.Leader) {
					break
				}
				err = fmt.Errorf("no leader yet (%x)", st.Leader)
			}
			last = err
			if ctx.Err() != nil {
				cli.Close()
				return fmt.Errorf("etcd member %s not healthy after %s: %v\n%s", m.Name, Timeout, last, tail(read(c.log(m.Name)), 30))
			}
			time.Sleep(100 * time.Millisecond)
		}
		cli.Close()
	}
	return nil
}

// Client connects to endpoints with certs, each connection made from
// inside network namespace netns; it is closed when the test ends.
func Client(t testing.TB, netns string, endpoints []string, certs fleet.Certs) *clientv3.Client {
	t.Helper()
	cli, err := NewClient(netns, endpoints, certs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// NewClient is Client for a program that is not a test: the caller closes
// the client.
func NewClient(netns string, endpoints []string, certs fleet.Certs) (*clientv3.Client, error) {
	tc, err := certs.TLS()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tc,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{Dialer(netns)},
		Logger:      zap.NewNop(), // the test says what failed
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %v: %w", endpoints, err)
	}
	return cli, nil
}

// Dialer makes gRPC's connections from inside network namespace netns.
func Dialer(netns string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return Dial(ctx, netns, addr)
	})
}

// Dial connects to TCP address addr from inside network namespace netns.
func Dial(ctx context.Context, netns, addr string) (net.Conn, error) {
	var c net.Conn
	err := sandbox.Do(netns, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

func read(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
