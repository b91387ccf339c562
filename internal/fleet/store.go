package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// State is everything of the fleet in etcd, read at one revision.
type State struct {
	Rev       int64             // the store's revision of the read
	File      []byte            // the desired infra.toml; nil before the first push
	FileRev   int64             // the revision it was pushed at (its ModRevision)
	Placement map[string]string // VM -> host
	Moves     map[string]Move   // VM -> the move under way
	Alive     map[string]bool   // hosts whose lease holds
	Hosts     map[string]HostStatus

	placementRev int64 // the ModRevision of PlacementKey; 0 when absent
}

// Move is a move under way, recorded by microvm move.
type Move struct {
	From, To string
	Since    time.Time
	Step     string // what it is doing, for fleet status
}

// HostStatus is what a host writes of itself (StatusKey).
type HostStatus struct {
	Host     string     `json:"host"`
	Applied  int64      `json:"applied"`             // the revision of the file its part was last applied from
	Error    string     `json:"error,omitempty"`     // why the last apply failed
	At       time.Time  `json:"at"`                  // when it wrote this
	Version  string     `json:"version"`             // of microvm
	VMs      []VMStatus `json:"vms"`                 // the VMs of its part, and any still running that left it
	EtcdLost *time.Time `json:"etcd_lost,omitempty"` // set in the first status after etcd came back
}

// VMStatus is how one VM is on its host.
type VMStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // as status says it: running, stopped, ...
	Ready bool   `json:"ready"` // its guest answered
}

// Load reads the whole fleet at one revision.
func Load(ctx context.Context, cli *clientv3.Client) (*State, error) {
	resp, err := cli.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading the fleet from etcd: %w", err)
	}
	st := &State{Rev: resp.Header.Revision, Placement: map[string]string{}, Moves: map[string]Move{},
		Alive: map[string]bool{}, Hosts: map[string]HostStatus{}}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case k == DesiredKey:
			st.File, st.FileRev = kv.Value, kv.ModRevision
		case k == PlacementKey:
			if err := json.Unmarshal(kv.Value, &st.Placement); err != nil {
				return nil, fmt.Errorf("reading where the VMs run (%s): %w", PlacementKey, err)
			}
			st.placementRev = kv.ModRevision
		case strings.HasPrefix(k, MovePrefix):
			var m Move
			if json.Unmarshal(kv.Value, &m) == nil {
				st.Moves[strings.TrimPrefix(k, MovePrefix)] = m
			}
		case k == AliveKey(HostOf(k)):
			st.Alive[HostOf(k)] = true
		case k == StatusKey(HostOf(k)):
			var hs HostStatus
			if json.Unmarshal(kv.Value, &hs) == nil {
				st.Hosts[HostOf(k)] = hs
			}
		}
	}
	return st, nil
}

// Model parses the desired file as the whole fleet.
func (st *State) Model() (*config.Infra, error) {
	if st.File == nil {
		return nil, errors.New("the fleet has no file yet; run microvm fleet push infra.toml")
	}
	return config.Parse(fmt.Sprintf("fleet revision %d", st.FileRev), st.File)
}

// PartOf returns the VMs placed on host, sorted.
func PartOf(placement map[string]string, host string) []string {
	var vms []string
	for vm, h := range placement {
		if h == host {
			vms = append(vms, vm)
		}
	}
	sort.Strings(vms)
	return vms
}

// Part is host's own infra.toml at this state: the fleet's file with its
// [fleet.part].
// The part records how to reach etcd (etcd, certs) for local commands.
func (st *State) Part(host string, etcd []string, certs string) []byte {
	return config.WithPart(st.File, config.Part{Host: host, VMs: PartOf(st.Placement, host), Revision: st.FileRev, Etcd: etcd, Certs: certs})
}

// ErrStale is a push whose file is not based on the fleet's current one.
var ErrStale = errors.New("stale push")

// Pushed is what a push did.
type Pushed struct {
	Rev      int64             // the file's new revision
	Replaced int64             // the revision it replaced (0: the first push)
	Placed   map[string]string // VMs placed by this push
	Removed  []string          // VMs that left the file (their placement goes)
}

// Push validates src as the fleet's file, places its new VMs, and writes
// the file and the placements in one transaction, which fails if anything
// it read changed since. With replaces != 0 it refuses unless the fleet's
// file is still at that revision.
func Push(ctx context.Context, cli *clientv3.Client, name string, src []byte, replaces int64) (*Pushed, error) {
	in, err := config.Parse(name, src)
	if err != nil {
		return nil, err
	}
	if !in.IsFleet() {
		return nil, errors.New(name + " declares no [fleet.host.NAME]; a fleet's file names its hosts (docs/fleet.md)")
	}
	if in.Part.Host != "" {
		return nil, errors.New(name + " is a host's part (it has [fleet.part]); push the fleet's own file")
	}
	st, err := Load(ctx, cli)
	if err != nil {
		return nil, err
	}
	if replaces != 0 && replaces != st.FileRev {
		return nil, fmt.Errorf("%w: the fleet's file is at revision %d, not %d: someone pushed since; get it with microvm fleet pull, merge your change and push again", ErrStale, st.FileRev, replaces)
	}
	placement, placed, removed, err := Place(in, st.Placement, st.Moves)
	if err != nil {
		return nil, err
	}
	// Every host's part must be a valid model on its own.
	for _, h := range in.Fleet {
		if _, err := config.Parse(name+" (the part of "+h.Name+")", config.WithPart(src, config.Part{Host: h.Name, VMs: PartOf(placement, h.Name)})); err != nil {
			return nil, err
		}
	}
	// Nothing read changed since: the file, the placements, the moves (a
	// move hands a VM over by changing the placements).
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(DesiredKey), "=", st.FileRev),
		st.placementUnchanged(),
		clientv3.Compare(clientv3.ModRevision(MovePrefix).WithPrefix(), "<", st.Rev+1),
	).Then(clientv3.OpPut(DesiredKey, string(src)), placementOp(placement)).Commit()
	if err != nil {
		return nil, fmt.Errorf("writing the fleet's file: %w", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("%w: the fleet changed while this push was placing its VMs (another push or a move); run it again", ErrStale)
	}
	return &Pushed{Rev: resp.Header.Revision, Replaced: st.FileRev, Placed: placed, Removed: removed}, nil
}

// Place decides where each VM of in runs: where it runs now, else on its
// pinned host, else on the host with the most free memory that fits it.
// It returns the whole placement, the new placements, and the VMs that
// left the file. A VM pinned to a host other than the one it runs on
// (moved since) is refused: the file must say where the VM is.
func Place(in *config.Infra, current map[string]string, moves map[string]Move) (all, placed map[string]string, removed []string, err error) {
	all, placed = map[string]string{}, map[string]string{}
	free := map[string]int{}
	for _, h := range in.Fleet {
		free[h.Name] = h.MemoryMiB
	}
	var problems []string
	for vm := range current {
		if _, ok := in.VM(vm); !ok {
			if _, moving := moves[vm]; moving {
				problems = append(problems, fmt.Sprintf("%s is being moved; let the move finish before removing it", vm))
			}
			removed = append(removed, vm)
		}
	}
	sort.Strings(removed)
	// Where VMs run now stays, pinned or not; they take their memory first.
	for _, vm := range in.VMs {
		h, ok := current[vm.Name]
		if !ok {
			continue
		}
		if _, declared := in.FleetHost(h); !declared {
			problems = append(problems, fmt.Sprintf("%s runs on %s, which the file no longer declares; move it first (microvm move %s --to HOST)", vm.Name, h, vm.Name))
			continue
		}
		if vm.Host != "" && vm.Host != h {
			problems = append(problems, fmt.Sprintf("vm.%s.host = %q, but %s runs on %s; write host = %q, or move it (microvm move %s --to %s)", vm.Name, vm.Host, vm.Name, h, h, vm.Name, vm.Host))
			continue
		}
		all[vm.Name] = h
		free[h] -= vm.MemoryMiB
	}
	// Then the pinned new VMs, then the others, biggest first.
	var rest []*config.VM
	for i := range in.VMs {
		vm := &in.VMs[i]
		if _, ok := current[vm.Name]; ok {
			continue
		}
		if vm.Host != "" {
			all[vm.Name], placed[vm.Name] = vm.Host, vm.Host
			free[vm.Host] -= vm.MemoryMiB
			continue
		}
		rest = append(rest, vm)
	}
	sort.SliceStable(rest, func(i, j int) bool { return rest[i].MemoryMiB > rest[j].MemoryMiB })
	for _, vm := range rest {
		best := ""
		for _, h := range in.Fleet {
			if free[h.Name] >= vm.MemoryMiB && (best == "" || free[h.Name] > free[best]) {
				best = h.Name
			}
		}
		if best == "" {
			problems = append(problems, fmt.Sprintf("no host has %d MiB free for %s; add a host, raise a host's memory, or make VMs smaller", vm.MemoryMiB, vm.Name))
			continue
		}
		all[vm.Name], placed[vm.Name] = best, best
		free[best] -= vm.MemoryMiB
	}
	for _, h := range in.Fleet {
		if free[h.Name] < 0 {
			problems = append(problems, fmt.Sprintf("the VMs on %s take %d MiB of memory, more than its memory = %d", h.Name, h.MemoryMiB-free[h.Name], h.MemoryMiB))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, nil, nil, errors.New("placing the VMs: " + strings.Join(problems, "; ") + "; nothing was pushed")
	}
	return all, placed, removed, nil
}

// placementUnchanged holds while the placements are as st read them.
func (st *State) placementUnchanged() clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(PlacementKey), "=", st.placementRev)
}

// placementOp writes placement as the fleet's placements.
func placementOp(placement map[string]string) clientv3.Op {
	b, _ := json.Marshal(placement)
	return clientv3.OpPut(PlacementKey, string(b))
}
