package cli

import "fmt"

func validateCmd() *command {
	return &command{
		name:  "validate",
		args:  "[-f FILE]",
		short: "check infra.toml and show what it derives",
		long: `
Reads infra.toml, reports every problem with file:line:col and what to write
instead, and prints the derived network of each VM. It touches nothing and
needs no root.

Examples:
  microvm validate
  microvm validate -f examples/infra.toml`,
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: ok, %d VMs, uplink %s\n", in.File, len(in.VMs), in.Host.Uplink)
			for _, vm := range in.VMs {
				fmt.Fprintf(e.stdout, "  %-8s %-15s gateway %-12s bridge %-10s tap %-10s mac %s  %d vCPU, %d MiB, %s, image %s\n",
					vm.Name, vm.Subnet, vm.Gateway, vm.Bridge, vm.TAP, vm.MAC, vm.VCPU, vm.MemoryMiB, vm.Hypervisor, vm.Image)
			}
			return nil
		},
	}
}
