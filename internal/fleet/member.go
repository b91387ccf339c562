package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// Member is one host of the fleet, as microvm host --fleet runs it: it
// keeps its part file equal to its part of the fleet's file in etcd,
// applies it when it changes, and writes back what it runs.
type Member struct {
	Client  *clientv3.Client
	Etcd    []string // its endpoints, and
	Certs   Certs    // its certificates, recorded in the part for local commands
	Name    string
	File    string                                       // its part: the host's own infra.toml
	Apply   func(ctx context.Context, file string) error // today's apply of a file
	Observe func(file string) ([]VMStatus, error)        // how its VMs are
	Version string
	Log     io.Writer
	// Local, when set, names the file where the host says how it stands
	// with etcd, for fleet status on this host while etcd does not
	// answer (the part's Host.FleetState).
	Local func(part *config.Infra) string

	// LeaseTTL is how long the host is shown alive after it stops
	// renewing its lease (default 10 s).
	LeaseTTL int64
	// Every is how often it looks at its VMs when nothing changes in
	// etcd, and retries a failed apply (default 5 s).
	Every time.Duration

	held      chan struct{} // closed when the lease is lost
	lastSaid  []byte        // the status last written
	lostSince time.Time
	lastErr   string // the problem last logged: said once until it changes
	local     Local  // what sayLocal was last given
}

// Local is what a host says of itself on its own disk: the revision of
// the fleet's file its part is of, and since when etcd has not answered
// it (nil while it does).
type Local struct {
	Host     string     `json:"host"`
	Applied  int64      `json:"applied"`
	EtcdLost *time.Time `json:"etcd_lost,omitempty"`
}

// partMarker is in every part file: a file without it is the user's, and
// is never overwritten.
const partMarker = "[fleet.part]"

// Run keeps the host in its part until ctx ends. Losing etcd never stops a
// VM: the part file stays, and the host says since when it has no etcd.
func (m *Member) Run(ctx context.Context) error {
	if m.LeaseTTL == 0 {
		m.LeaseTTL = 10
	}
	if m.Every == 0 {
		m.Every = 5 * time.Second
	}
	if err := m.checkFile(); err != nil {
		return err
	}
	var applied []byte   // the part last applied without error
	var appliedRev int64 // the revision of the file it was of
	var failed bool      // the part last written was not applied: whatever the part, apply it
	for ctx.Err() == nil {
		st, err := m.read(ctx)
		if err != nil {
			if m.lostSince.IsZero() {
				m.lostSince = time.Now()
				fmt.Fprintf(m.Log, "fleet: etcd is unreachable (%v); keeping this host's part and every VM as they are\n", err)
				m.sayLocal(appliedRev)
			}
			sleep(ctx, m.Every/2)
			continue
		}
		if !m.lostSince.IsZero() {
			fmt.Fprintf(m.Log, "fleet: etcd is back after %s\n", time.Since(m.lostSince).Round(time.Second))
		}
		m.keepAlive(ctx)
		var applyErr error
		switch {
		case st.File == nil:
			applyErr = errors.New("the fleet has no file yet (microvm fleet push)")
		default:
			in, err := st.Model()
			if err != nil {
				applyErr = err
				break
			}
			if _, ok := in.FleetHost(m.Name); !ok {
				applyErr = fmt.Errorf("this host, %s, is not declared in the fleet's file: add [fleet.host.%s] and push", m.Name, m.Name)
				break
			}
			part := st.Part(m.Name, m.Etcd, m.Certs.Dir)
			if bytes.Equal(part, applied) && !failed {
				break
			}
			if applyErr = m.write(part); applyErr == nil {
				fmt.Fprintf(m.Log, "fleet: applying the part of revision %d: %v\n", st.FileRev, PartOf(st.Placement, m.Name))
				if applyErr = m.Apply(ctx, m.File); applyErr == nil {
					applied, appliedRev = part, st.FileRev
				}
			}
			failed = applyErr != nil
		}
		if applyErr != nil && applyErr.Error() != m.lastErr {
			fmt.Fprintf(m.Log, "fleet: %v\n", applyErr)
		}
		m.lastErr = ""
		if applyErr != nil {
			m.lastErr = applyErr.Error()
		}
		m.report(ctx, appliedRev, applyErr)
		m.lostSince = time.Time{}
		m.sayLocal(appliedRev)
		m.wait(ctx, st.Rev)
	}
	return nil
}

// checkFile refuses to take over a file that is not a part: the user's
// own infra.toml stays theirs.
func (m *Member) checkFile() error {
	b, err := os.ReadFile(m.File)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !bytes.Contains(b, []byte("\n"+partMarker+"\n")):
		return fmt.Errorf("%s exists and is not a fleet part (it has no %s): a fleet host writes its own file; move it away, or name another with -f", m.File, partMarker)
	}
	return nil
}

// write replaces the part file atomically.
func (m *Member) write(part []byte) error {
	if err := os.MkdirAll(filepath.Dir(m.File), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(m.File); err == nil && bytes.Equal(old, part) {
		return nil
	}
	tmp := m.File + ".new"
	if err := os.WriteFile(tmp, part, 0o644); err != nil {
		return fmt.Errorf("writing the part: %w", err)
	}
	return os.Rename(tmp, m.File)
}

func (m *Member) read(ctx context.Context) (*State, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return Load(c, m.Client)
}

// sayLocal writes the host's Local when it changed. A host without a
// part yet says nothing: no VM of the fleet runs on it.
func (m *Member) sayLocal(applied int64) {
	l := Local{Host: m.Name, Applied: applied}
	if !m.lostSince.IsZero() {
		t := m.lostSince.UTC()
		l.EtcdLost = &t
	}
	if m.Local == nil || l.Applied == m.local.Applied && (l.EtcdLost == nil) == (m.local.EtcdLost == nil) {
		return
	}
	in, err := config.Load(m.File)
	if err != nil {
		return
	}
	said := l
	if said.Applied == 0 { // not applied since the daemon started (a reboot): the part on disk runs
		said.Applied = in.Part.Revision
	}
	path := m.Local(in)
	b, _ := json.Marshal(said)
	err = os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		err = safedir.WritePrivate(path, b, 0o644)
	}
	if err != nil {
		fmt.Fprintf(m.Log, "fleet: saying how this host stands with etcd: %v\n", err)
		return
	}
	m.local = l
}

// keepAlive holds the host's lease, and its alive key on it; a lease lost
// while etcd was away is taken again.
func (m *Member) keepAlive(ctx context.Context) {
	if m.held != nil {
		select {
		case <-m.held:
		default:
			return // still held
		}
	}
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	g, err := m.Client.Grant(c, m.LeaseTTL)
	if err != nil {
		fmt.Fprintf(m.Log, "fleet: taking a lease: %v\n", err)
		return
	}
	if _, err := m.Client.Put(c, AliveKey(m.Name), m.Version, clientv3.WithLease(g.ID)); err != nil {
		fmt.Fprintf(m.Log, "fleet: saying this host is alive: %v\n", err)
		return
	}
	ch, err := m.Client.KeepAlive(ctx, g.ID)
	if err != nil {
		fmt.Fprintf(m.Log, "fleet: keeping the lease: %v\n", err)
		return
	}
	held := make(chan struct{})
	go func() {
		for range ch { // the renewals; the channel closes when the lease is lost
		}
		close(held)
	}()
	m.held = held
}

// report writes the host's status when it changed (the time aside).
func (m *Member) report(ctx context.Context, applied int64, applyErr error) {
	hs := HostStatus{Host: m.Name, Version: m.Version, Applied: applied}
	if applyErr != nil {
		hs.Error = applyErr.Error()
	}
	if vms, err := m.Observe(m.File); err == nil {
		hs.VMs = vms
	} else if hs.Error == "" && !errors.Is(err, fs.ErrNotExist) {
		hs.Error = "reading its VMs: " + err.Error()
	}
	if !m.lostSince.IsZero() {
		t := m.lostSince
		hs.EtcdLost = &t
	}
	cmp, _ := json.Marshal(hs)
	if bytes.Equal(cmp, m.lastSaid) {
		return
	}
	hs.At = time.Now().UTC()
	b, _ := json.Marshal(hs)
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := m.Client.Put(c, StatusKey(m.Name), string(b)); err != nil {
		fmt.Fprintf(m.Log, "fleet: writing this host's status: %v\n", err)
		return
	}
	m.lastSaid = cmp
}

// wait returns when the fleet's file, a placement or a move changed after
// rev, when Every has passed (to look at the VMs again), or at once when
// the watch breaks (compaction, etcd lost): Run then reads everything
// again.
func (m *Member) wait(ctx context.Context, rev int64) {
	c, cancel := context.WithTimeout(ctx, m.Every)
	defer cancel()
	wc := m.Client.Watch(clientv3.WithRequireLeader(c), Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range wc {
		if err := resp.Err(); err != nil {
			if !errors.Is(err, rpctypes.ErrCompacted) && c.Err() == nil {
				fmt.Fprintf(m.Log, "fleet: watching etcd: %v\n", err)
			}
			return
		}
		for _, ev := range resp.Events {
			if !strings.HasPrefix(string(ev.Kv.Key), HostsPrefix) {
				return
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
