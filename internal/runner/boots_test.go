package runner

import (
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestBoots: a start after a stop that was asked for is a start; a start
// after a VMM that died (nothing recorded its stop) is a restart.
func TestBoots(t *testing.T) {
	testenv.NeedRoot(t) // the record is read only from a directory of root's
	_, vm := load(t, "")
	if b, err := ReadBoots(vm); err != nil || b != (Boots{}) {
		t.Fatalf("a VM never started: %+v, %v", b, err)
	}
	run, err := supervise.OpenRunDir(vm)
	if err != nil {
		t.Fatal(err)
	}
	defer run.Close()
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	steps := []struct {
		name string
		do   func() error
		want Boots
	}{
		{"first start", func() error { return bootStarted(run, vm, t0) }, Boots{Starts: 1, Up: true, LastStart: t0}},
		{"ready", func() error { return bootReady(run, vm, t0, t0.Add(31*time.Second)) },
			Boots{Starts: 1, Up: true, LastStart: t0, LastReady: 31 * time.Second}},
		{"the VMM dies, the supervisor starts again", func() error { return bootStarted(run, vm, t0.Add(time.Minute)) },
			Boots{Starts: 2, Restarts: 1, Up: true, LastStart: t0.Add(time.Minute), LastReady: 31 * time.Second}},
		{"stopped as asked", func() error { return bootStopped(run, vm) },
			Boots{Starts: 2, Restarts: 1, LastStart: t0.Add(time.Minute), LastReady: 31 * time.Second}},
		{"started again", func() error { return bootStarted(run, vm, t0.Add(time.Hour)) },
			Boots{Starts: 3, Restarts: 1, Up: true, LastStart: t0.Add(time.Hour), LastReady: 31 * time.Second}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got, err := ReadBoots(vm)
		if err != nil || got != st.want {
			t.Errorf("%s: got %+v, %v; want %+v", st.name, got, err, st.want)
		}
	}
}
