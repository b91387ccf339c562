package firewall

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// A published port is forwarded before the host's own sockets see it: a
// port the host itself listens on (its sshd on 22, say) goes to the VM
// from the uplink side, and the host no longer answers there. plan warns.

// listening reads the ports this network namespace listens on (TCP) or is
// bound to (UDP), as "tcp 22", from /proc/thread-self/net: the calling
// thread's namespace (/proc/net is the process's first thread's). Only
// published ports are looked up in it: without any, it reads nothing
// (the kernel walks every socket of the machine to write those files).
func listening(in *config.Infra) map[string]bool {
	out := map[string]bool{}
	if !slices.ContainsFunc(in.VMs, func(vm config.VM) bool { return len(vm.Publish) > 0 }) {
		return out
	}
	for _, f := range []struct{ file, proto, state string }{
		{"/proc/thread-self/net/tcp", "tcp", "0A"}, {"/proc/thread-self/net/tcp6", "tcp", "0A"},
		{"/proc/thread-self/net/udp", "udp", "07"}, {"/proc/thread-self/net/udp6", "udp", "07"},
	} {
		fh, err := os.Open(f.file)
		if err != nil {
			continue // no IPv6 here, say: nothing listens there
		}
		s := bufio.NewScanner(fh)
		for s.Scan() {
			// "  0: 00000000:0016 00000000:0000 0A ..."
			fields := strings.Fields(s.Text())
			if len(fields) < 4 || fields[3] != f.state {
				continue
			}
			_, port, ok := strings.Cut(fields[1], ":")
			if n, err := strconv.ParseUint(port, 16, 16); ok && err == nil {
				out[fmt.Sprintf("%s %d", f.proto, n)] = true
			}
		}
		fh.Close()
	}
	return out
}

// publishWarnings says which published ports the host listens on itself.
func publishWarnings(in *config.Infra, listen map[string]bool) []string {
	var out []string
	for _, vm := range in.VMs {
		for _, p := range vm.Publish {
			if key := fmt.Sprintf("%s %d", p.Proto, p.HostPort); listen[key] {
				out = append(out, fmt.Sprintf("vm.%s publishes %s, on which this host listens itself: from the uplink, %s gets it, and the host no longer answers there (publish another host port, e.g. \"%s %d:%d\")",
					vm.Name, key, vm.Name, p.Proto, p.HostPort+8000, p.VMPort))
			}
		}
	}
	return out
}

// publishNotes says where each published port goes, for plan.
func publishNotes(in *config.Infra) []string {
	var out []string
	for _, vm := range in.VMs {
		for _, p := range vm.Publish {
			from := ""
			if len(p.From) > 0 {
				_, from, _ = strings.Cut(p.String(), " from ")
				from = ", from " + from
			}
			out = append(out, fmt.Sprintf("publish: the uplink's %s %d goes to %s %s:%d%s", p.Proto, p.HostPort, vm.Name, vm.Addr, p.VMPort, from))
		}
	}
	return out
}
