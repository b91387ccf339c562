package vmm

// Unregister takes name out of the registry, for tests that add one.
func Unregister(name string) { delete(registry, name) }
