package hostpart

import (
	"encoding/json"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/proc"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// State is what `microvm host` says about itself in h.HostState(), for
// status --host.
type State struct {
	proc.ID                     // its pid, checked by start time
	Since    time.Time          `json:"since"`
	File     string             `json:"file"`
	Detached bool               `json:"detached"` // started by up or apply, not by systemd
	Repairs  int                `json:"repairs"`
	Recent   []firewall.Restore `json:"recent_repairs,omitempty"` // the last few, newest last
}

// KeepRepairs is how many repairs State keeps.
const KeepRepairs = 10

// Repaired counts r and keeps it among the recent ones.
func (st *State) Repaired(r firewall.Restore) {
	st.Repairs++
	st.Recent = append(st.Recent, r)
	if len(st.Recent) > KeepRepairs {
		st.Recent = st.Recent[len(st.Recent)-KeepRepairs:]
	}
}

// Last is the last repair, or nil.
func (st *State) Last() *firewall.Restore {
	if len(st.Recent) == 0 {
		return nil
	}
	return &st.Recent[len(st.Recent)-1]
}

// ReadState reads h's host state; ok is false when no `microvm host`
// runs.
func ReadState(h config.Host) (st State, ok bool) {
	b, err := safedir.ReadPrivate(h.HostState())
	if err != nil || json.Unmarshal(b, &st) != nil {
		return st, false
	}
	return st, st.Alive()
}

// WriteState writes st for status, replacing the file at once.
func WriteState(h config.Host, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return safedir.WritePrivate(h.HostState(), append(b, '\n'), 0o644)
}
