package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// docsFile is where every benchmark writes its section.
const docsFile = "docs/benchmarks.md"

// machine describes the computer a benchmark ran on, read at its start.
type machine struct {
	CPU, Kernel, Accel, Load, Mem, Iptables, QEMU string
	Cores                                         int
	Started                                       time.Time
}

func readMachine(accel string) machine {
	m := machine{Cores: runtime.NumCPU(), Accel: accel, Started: time.Now().UTC()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:")), "%d", &kb)
				m.Mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	m.Kernel = strings.TrimSpace(output("uname", "-sr"))
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	m.Iptables = strings.TrimSpace(output("iptables", "--version"))
	m.QEMU = firstLine(output("qemu-system-x86_64", "--version"))
	return m
}

// busy reports whether the 1-minute load average at the start says other
// work shared the machine.
func (m machine) busy() bool {
	var l1 float64
	fmt.Sscanf(m.Load, "%g", &l1)
	return l1 > 1.5
}

func (m machine) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run %s on: %s, %d cores, %s RAM, %s", m.Started.Format("2006-01-02 15:04 UTC"), m.CPU, m.Cores, m.Mem, m.Kernel)
	if m.Accel != "" {
		fmt.Fprintf(&b, ", accelerator **%s**", m.Accel)
	}
	fmt.Fprintf(&b, "; load average at start %s", m.Load)
	if m.busy() {
		b.WriteString(" (**the machine was not idle**: a 1-minute load above 1.5 on these cores means other work, or the teardown of a previous run, shared them, so times are pessimistic and noisy)")
	}
	b.WriteString(".\n")
	return b.String()
}

func output(name string, args ...string) string {
	out, _ := exec.Command(name, args...).Output()
	return string(out)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// table is rows of cells printed aligned on the terminal and as markdown.
type table struct {
	head []string
	rows [][]string
}

func (t *table) add(cells ...any) {
	row := make([]string, len(cells))
	for i, c := range cells {
		row[i] = fmt.Sprint(c)
	}
	t.rows = append(t.rows, row)
}

func (t *table) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.head, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func (t *table) markdown() string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(t.head, " | ") + " |\n")
	b.WriteString(strings.Repeat("| --- ", len(t.head)) + "|\n")
	for _, r := range t.rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

const docsHeader = `# Benchmarks

Measured by the programs under ` + "`bench/`" + ` (see ` + "`bench/README.md`" + `), never asserted by
tests. Each section is rewritten by its own command, which also records the
machine and its load at the start of the run. Every benchmark runs inside
throwaway network namespaces (package sandbox); none touches the machine's own
network.

`

// writeSection replaces the section of docs/benchmarks.md between the
// markers of name (or appends it), keeping the other sections.
func writeSection(name, body string) error {
	begin, end := "<!-- bench:"+name+" -->", "<!-- /bench:"+name+" -->"
	old, err := os.ReadFile(docsFile)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	if doc == "" {
		doc = docsHeader
	}
	section := begin + "\n" + strings.TrimRight(body, "\n") + "\n" + end
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i >= 0 && j > i {
		doc = doc[:i] + section + doc[j+len(end):]
	} else {
		doc = strings.TrimRight(doc, "\n") + "\n\n" + section + "\n"
	}
	if err := os.MkdirAll(filepath.Dir(docsFile), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(docsFile, []byte(doc), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote section %q of %s\n", name, docsFile)
	return nil
}

// subnet is the i-th VM's subnet (i from 1): 10.1.1.0/24 ... 10.1.250.0/24,
// then 10.2.1.0/24 ...
func subnet(i int) string {
	return fmt.Sprintf("10.%d.%d.0/24", 1+(i-1)/250, (i-1)%250+1)
}

// infraTOML writes infra.toml text for n VMs vm1..vmN.
func infraTOML(n int, stateDir, runDir, accel string, seedSubnets bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[host]\nuplink = \"eth0\"\nstate_dir = %q\nrun_dir = %q\n", stateDir, runDir)
	if accel != "" {
		fmt.Fprintf(&b, "accel = %q\n", accel)
	}
	b.WriteString("[defaults]\nhypervisor = \"qemu\"\nvcpu = 1\nmemory = 512\n")
	for i := 1; i <= n; i++ {
		s := subnet(i)
		if seedSubnets {
			s = fmt.Sprintf("10.%d.0.0/24", i) // the design's 10.1.0.0/24 ... 10.4.0.0/24
		}
		fmt.Fprintf(&b, "[vm.vm%d]\nsubnet = %q\n", i, s)
	}
	return b.String()
}

// parseInfra writes text to dir/infra.toml and loads it.
func parseInfra(dir, text string) (*config.Infra, string, error) {
	file := filepath.Join(dir, "infra.toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		return nil, "", err
	}
	in, err := config.Load(file)
	return in, file, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
func secs(d time.Duration) string {
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// countLines counts the lines of r that start with prefix.
func countLines(r []byte, prefix string) int {
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(r))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			n++
		}
	}
	return n
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
