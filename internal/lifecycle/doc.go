// Package lifecycle is the VM half of the plan: which VMs start, restart
// (and why) and stop, and how a VM's supervisor is started and stopped and
// its state read. Package plan holds the host half; cli only parses, calls
// and prints. What it reports goes to the io.Writer it is given.
package lifecycle
