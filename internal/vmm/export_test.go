package vmm

import "github.com/simple-microvm-infra/microvm/internal/config"

// Unregister takes name out of the registry, for tests that add one.
func Unregister(name config.Hypervisor) { delete(registry, name) }
