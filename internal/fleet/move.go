package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// ErrMoved says the VM already runs on the move's target.
var ErrMoved = errors.New("already there")

// BeginMove records a move of vm to host to, in one transaction that holds
// only while vm is placed where it was read and no other move of it is
// under way. A recorded move of vm to the same host is resumed.
func BeginMove(ctx context.Context, cli *clientv3.Client, vm, to string) (*State, Move, error) {
	st, err := Load(ctx, cli)
	if err != nil {
		return nil, Move{}, err
	}
	in, err := st.Model()
	if err != nil {
		return nil, Move{}, err
	}
	from, ok := st.Placement[vm]
	switch {
	case !ok:
		return nil, Move{}, fmt.Errorf("%s is not placed on any host (is it in the fleet's file? microvm fleet status)", vm)
	case from == to:
		return st, Move{From: from, To: to}, fmt.Errorf("%s runs on %s: %w", vm, to, ErrMoved)
	}
	if _, ok := in.FleetHost(to); !ok {
		return nil, Move{}, fmt.Errorf("there is no host %q in the fleet's file", to)
	}
	if m, ok := st.Moves[vm]; ok {
		if m.To != to {
			return nil, Move{}, fmt.Errorf("%s is being moved to %s (since %s); finish that move first: microvm move %s --to %s", vm, m.To, m.Since.Format(time.RFC3339), vm, m.To)
		}
		return st, m, nil
	}
	if err := fits(st, in, vm, to); err != nil {
		return nil, Move{}, err
	}
	m := Move{From: from, To: to, Since: time.Now().UTC(), Step: "sending"}
	b, _ := json.Marshal(m)
	resp, err := cli.Txn(ctx).If(
		st.placementUnchanged(),
		clientv3.Compare(clientv3.CreateRevision(MoveKey(vm)), "=", 0),
	).Then(clientv3.OpPut(MoveKey(vm), string(b))).Commit()
	if err != nil {
		return nil, Move{}, fmt.Errorf("recording the move: %w", err)
	}
	if !resp.Succeeded {
		return nil, Move{}, fmt.Errorf("%s changed while the move was being recorded (another move or push); run it again", vm)
	}
	return st, m, nil
}

// fits says whether vm may join to's part: memory, and a valid model
// (its openings join VMs of to only).
func fits(st *State, in *config.Infra, vm, to string) error {
	h, _ := in.FleetHost(to)
	v, _ := in.VM(vm)
	used := 0
	for _, name := range PartOf(st.Placement, to) {
		if other, ok := in.VM(name); ok {
			used += other.MemoryMiB
		}
	}
	if used+v.MemoryMiB > h.MemoryMiB {
		return fmt.Errorf("%s has %d MiB free of memory = %d, and %s needs %d", to, h.MemoryMiB-used, h.MemoryMiB, vm, v.MemoryMiB)
	}
	if v.Host != "" && v.Host != to {
		return fmt.Errorf("vm.%s.host = %q pins it; change it to %q and push first", vm, v.Host, to)
	}
	vms := append(PartOf(st.Placement, to), vm)
	if _, err := config.Parse("the part of "+to+" with "+vm, config.WithPart(st.File, config.Part{Host: to, VMs: vms})); err != nil {
		return err
	}
	return nil
}

// MoveStep updates what the move of vm is doing, for fleet status.
func MoveStep(ctx context.Context, cli *clientv3.Client, vm string, m Move, step string) error {
	m.Step = step
	b, _ := json.Marshal(m)
	_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(MoveKey(vm)), ">", 0)).
		Then(clientv3.OpPut(MoveKey(vm), string(b))).Commit()
	return err
}

// Handover places vm on the move's target and ends the move, in one
// transaction that holds only while the placements are as read, with vm
// on its source, and the move is still recorded. Another VM's placement
// changing meanwhile (its own move) only makes it read and try again.
func Handover(ctx context.Context, cli *clientv3.Client, vm string, m Move) error {
	for range 10 {
		st, err := Load(ctx, cli)
		if err != nil {
			return fmt.Errorf("handing %s over to %s: %w", vm, m.To, err)
		}
		if _, ok := st.Moves[vm]; !ok || st.Placement[vm] != m.From {
			return fmt.Errorf("handing %s over to %s: it is placed on %q and its move record is gone: something else moved it meanwhile", vm, m.To, st.Placement[vm])
		}
		placement := maps.Clone(st.Placement)
		placement[vm] = m.To
		resp, err := cli.Txn(ctx).If(
			st.placementUnchanged(),
			clientv3.Compare(clientv3.CreateRevision(MoveKey(vm)), ">", 0),
		).Then(placementOp(placement), clientv3.OpDelete(MoveKey(vm))).Commit()
		if err != nil {
			return fmt.Errorf("handing %s over to %s: %w", vm, m.To, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("handing %s over to %s: the placements kept changing; run the move again", vm, m.To)
}

// EndMove forgets a move that did not hand the VM over: it stays where it
// was placed.
func EndMove(ctx context.Context, cli *clientv3.Client, vm string) error {
	_, err := cli.Delete(ctx, MoveKey(vm))
	return err
}

// Replace places vm on host to without carrying its data, for a VM whose
// host is lost for good, or whose data the user copied by hand: only while
// vm is still placed on from, no move of it is under way, and from is not
// alive or says vm is stopped there. The new host starts it from its
// image, or from the data the user put there.
func Replace(ctx context.Context, cli *clientv3.Client, vm, to string) (from string, err error) {
	st, err := Load(ctx, cli)
	if err != nil {
		return "", err
	}
	in, err := st.Model()
	if err != nil {
		return "", err
	}
	from, ok := st.Placement[vm]
	switch {
	case !ok:
		return "", fmt.Errorf("%s is not placed on any host", vm)
	case from == to:
		return "", fmt.Errorf("%s is placed on %s already", vm, to)
	case st.Alive[from] && !stoppedOn(st.Hosts[from], vm):
		return "", fmt.Errorf("%s runs on %s, which is alive: move it with its data (microvm move %s --to %s), or stop it there first (microvm down %s)", vm, from, vm, to, vm)
	}
	if _, ok := in.FleetHost(to); !ok {
		return "", fmt.Errorf("there is no host %q in the fleet's file", to)
	}
	if err := fits(st, in, vm, to); err != nil {
		return "", err
	}
	placement := maps.Clone(st.Placement)
	placement[vm] = to
	resp, err := cli.Txn(ctx).If(
		st.placementUnchanged(),
		clientv3.Compare(clientv3.CreateRevision(MoveKey(vm)), "=", 0),
	).Then(placementOp(placement)).Commit()
	if err != nil {
		return "", fmt.Errorf("placing %s on %s: %w", vm, to, err)
	}
	if !resp.Succeeded {
		return "", fmt.Errorf("placing %s on %s: the placements or a move of it changed meanwhile; run it again", vm, to)
	}
	return from, nil
}

// stoppedOn says whether host's status has vm stopped, or not at all.
func stoppedOn(hs HostStatus, vm string) bool {
	for _, v := range hs.VMs {
		if v.Name == vm {
			return v.State == "stopped"
		}
	}
	return true
}
