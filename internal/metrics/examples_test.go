package metrics

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/simple-microvm-infra/microvm/internal/config"

	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

const monitoring = "../../examples/monitoring/"

// families are the names of the families the endpoint serves.
func families() map[string]bool {
	ch := make(chan *prometheus.Desc, 64)
	go func() { (&Collector{}).Describe(ch); close(ch) }()
	name := regexp.MustCompile(`fqName: "([a-z0-9_]+)"`)
	out := map[string]bool{}
	for d := range ch {
		if m := name.FindStringSubmatch(d.String()); m != nil {
			out[m[1]] = true
		}
	}
	return out
}

// exprs collects every "expr" in a Grafana dashboard.
func exprs(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "expr" {
				*out = append(*out, s)
			}
			exprs(e, out)
		}
	case []any:
		for _, e := range x {
			exprs(e, out)
		}
	}
}

// TestExamples: the dashboard and the alerts ask only for families the
// endpoint serves; the dashboard has a row repeated per VM; Prometheus'
// own tool accepts the scrape config and the rules.
func TestExamples(t *testing.T) {
	known := families()
	b, err := os.ReadFile(monitoring + "dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	var all []string
	exprs(dash, &all)
	alerts, err := os.ReadFile(monitoring + "alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`microvm_[a-z0-9_]+`)
	for _, src := range append(all, string(alerts)) {
		for _, name := range used.FindAllString(src, -1) {
			if !known[name] {
				t.Errorf("%q asks for %s, which the endpoint does not serve", src, name)
			}
		}
	}
	if len(all) < 10 {
		t.Errorf("the dashboard has %d queries", len(all))
	}
	repeated := false
	for _, p := range dash["panels"].([]any) {
		if m := p.(map[string]any); m["type"] == "row" && m["repeat"] == "vm" {
			repeated = true
		}
	}
	if !repeated {
		t.Error("the dashboard has no row repeated per VM")
	}
	if !strings.Contains(string(b), `label_values(microvm_vm_info, vm)`) {
		t.Error("the dashboard's vm variable does not list the VMs")
	}

	// The monitoring VM's file: valid, and its Prometheus scrapes where
	// the host listens, which its allow list opens.
	in, err := config.Load(monitoring + "infra.toml")
	if err != nil {
		t.Fatal(err)
	}
	vmCfg, err := os.ReadFile(monitoring + "prometheus-vm.yml")
	if err != nil {
		t.Fatal(err)
	}
	mon, ok := in.VM("mon")
	if !ok || in.Host.Metrics.Listen != mon.Gateway.String()+":9753" || !strings.Contains(string(vmCfg), `["`+in.Host.Metrics.Listen+`"]`) ||
		len(mon.Allow) != 1 || !mon.Allow[0].Gateway {
		t.Errorf("examples/monitoring: listen %q, mon %+v", in.Host.Metrics.Listen, mon)
	}

	testenv.NeedCommands(t, "promtool")
	for _, args := range [][]string{{"check", "config", monitoring + "prometheus.yml"}, {"check", "config", monitoring + "prometheus-vm.yml"},
		{"check", "rules", monitoring + "alerts.yml"}} {
		if out, err := exec.Command("promtool", args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
