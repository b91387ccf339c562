package hostnet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// DiffVM returns what vm's own network lacks: every VM subnet's blackhole
// and vm's rule to them (routing.go), its bridge with the gateway address,
// up, and its TAP owned by its VMM user, on the bridge, up. It is what a
// VM needs of the host's network to start; the rest of Diff (other VMs'
// links, openings, forwarding) does not stop it.
func DiffVM(in *config.Infra, vm *config.VM) ([]action.Action, error) {
	o := &observed{}
	var addrs []netlink.Addr
	for _, name := range []string{vm.Bridge, vm.TAP} {
		l, err := linkOrNil(name)
		if err != nil {
			return nil, err
		}
		if l != nil {
			o.links = append(o.links, l)
		}
		if l != nil && name == vm.Bridge {
			if addrs, err = netlink.AddrList(l, netlink.FAMILY_ALL); err != nil {
				return nil, fmt.Errorf("listing the addresses of %s: %w", vm.Bridge, err)
			}
		}
	}
	if err := o.readVMs(addrs, *vm); err != nil {
		return nil, err
	}
	have, _, err := readRouting()
	if err != nil {
		return nil, err
	}
	return append(vmRouting(in, vm, have), vmDiff(vm, o)...), nil
}

// linkOrNil finds the link called name, or returns nil if there is none.
func linkOrNil(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding %s: %w", name, err)
	}
	return l, nil
}
