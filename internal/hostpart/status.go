package hostpart

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/plan"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
)

// PrintStatus writes the host part's lines of `status --host`: whether it
// is applied, and who keeps the firewall, with its last repair. It reads
// the network of the calling thread's namespace.
func PrintStatus(w io.Writer, in *config.Infra) {
	switch p, err := plan.Host(in); {
	case err != nil:
		fmt.Fprintf(w, "  host part: cannot tell (%v)\n", err)
	case len(p.Actions) == 0:
		fmt.Fprintln(w, "  host part: applied")
	default:
		fmt.Fprintf(w, "  host part: %d changes to make, e.g. %s (microvm apply --host-only makes them)\n", len(p.Actions), p.Actions[0])
	}
	st, ok := ReadState(in.Host)
	if !ok {
		fix := "microvm apply starts one"
		if supervise.Booted() {
			fix = "systemctl start " + supervise.HostUnit
		}
		fmt.Fprintf(w, "  firewall: not kept: no microvm host runs, so a flushed or edited table stays so until the next apply; %s\n", fix)
		return
	}
	who := supervise.HostUnit
	if st.Detached {
		who = "microvm host --detached (log in " + in.Host.HostLog() + ")"
	}
	fmt.Fprintf(w, "  firewall: kept by %s, pid %d, since %s\n", who, st.Pid, st.Since.Local().Format(time.DateTime))
	if r := st.Last(); r != nil {
		ago := time.Since(r.Heard).Round(time.Second)
		what := fmt.Sprintf("restored in %d ms", r.Millis)
		if r.Err != "" {
			what = "NOT restored (" + r.Err + "); VM ports held down"
		}
		fmt.Fprintf(w, "    %d repairs; the last %s ago: %s; %s\n", st.Repairs, ago, strings.Join(r.Changes, "; "), what)
	}
}
