package runner

import (
	"fmt"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/hostnet"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/storage"
)

// Only what a VM needs blocks its start: its own bridge and TAP, the
// firewall table (without it the VM would reach the other VMs, the host
// and the LAN), its storage (with ZFS, its data would land beside its
// dataset) and its image. Everything else the host part of apply would
// still change (other VMs' links and datasets, forwarding, Tailscale's
// routes, or a tailscaled that does not answer) is said in the supervisor's
// log and left to apply: a VM that crashed is restarted, and a host that
// boots brings its VMs back, whatever tailscaled thinks.

// checkHost refuses to start vm when the host lacks what it needs.
func checkHost(in *config.Infra, vm *config.VM) error {
	need, err := hostNeeds(in, vm)
	if err != nil {
		return err
	}
	if len(need) > 0 {
		return fmt.Errorf("the host part %s needs is not applied (plan shows %d changes for it, e.g. %q); run: microvm apply --host-only -f %s", vm.Name, len(need), need[0].String(), in.File)
	}
	return nil
}

// hostNeeds is what the host part must still change before vm can start.
func hostNeeds(in *config.Infra, vm *config.VM) ([]action.Action, error) {
	store, err := storage.For(in.Host).Diff(in)
	if err != nil {
		return nil, err
	}
	fw, err := firewall.Diff(in)
	if err != nil {
		return nil, err
	}
	links, err := hostnet.DiffVM(in, vm)
	if err != nil {
		return nil, err
	}
	dir := vm.Image
	if r, err := image.Resolve(in, vm.Image); err == nil && r.Dir != "" {
		dir = r.Dir
	}
	return append(append(storage.Needs(in.Host, vm, dir, store.Setup), fw.Setup...), links...), nil
}

// hostWarnings says what else the host part would change, and what plan
// warns about (such as a tailscaled that does not answer): nothing of it
// stops vm.
func hostWarnings(in *config.Infra, vm *config.VM) []string {
	p, err := plan.Host(in)
	if err != nil {
		return []string{fmt.Sprintf("the host part cannot be planned (%v); %s does not need it, but microvm apply will", err, vm.Name)}
	}
	out := p.Warnings
	if len(p.Actions) > 0 {
		var acts []string
		for _, a := range p.Actions {
			acts = append(acts, a.String())
		}
		out = append(out, fmt.Sprintf("the host part is not fully applied; %s does not need the rest, which microvm apply --host-only makes:\n  %s", vm.Name, strings.Join(acts, "\n  ")))
	}
	return out
}
