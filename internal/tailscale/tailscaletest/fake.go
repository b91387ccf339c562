// Package tailscaletest gives tests a fake tailscaled: it answers the three
// local API calls the program makes (status, read and edit the settings),
// on a Unix socket, as tailscaled does. test/tailscale runs the real one;
// the fake is for the cases a real one is hard to put in, such as a
// tailscaled that refuses every change.
package tailscaletest

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/types/views"
)

// Fake is a fake tailscaled.
type Fake struct {
	mu       sync.Mutex
	state    string
	routes   []netip.Prefix // advertised
	approved []netip.Prefix // by the control server
	refuse   string         // when set, edits fail with this message
	calls    int
}

// Start serves a fake tailscaled on socket until t ends: its backend state
// ("Running", "NeedsLogin", ...), the routes it advertises and those the
// control server approved.
func Start(t testing.TB, socket, state string, routes, approved []netip.Prefix) *Fake {
	t.Helper()
	f := &Fake{state: state, routes: routes, approved: approved}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /localapi/v0/status", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls++
		allowed := views.SliceOf(f.approved)
		json.NewEncoder(w).Encode(&ipnstate.Status{BackendState: f.state,
			Self: &ipnstate.PeerStatus{HostName: "hv", AllowedIPs: &allowed}})
	})
	mux.HandleFunc("GET /localapi/v0/prefs", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls++
		json.NewEncoder(w).Encode(&ipn.Prefs{AdvertiseRoutes: f.routes, ControlURL: "https://ctl.example"})
	})
	mux.HandleFunc("PATCH /localapi/v0/prefs", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls++
		if f.refuse != "" {
			http.Error(w, f.refuse, http.StatusInternalServerError)
			return
		}
		var mp ipn.MaskedPrefs
		if err := json.NewDecoder(r.Body).Decode(&mp); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if mp.AdvertiseRoutesSet {
			f.routes = mp.AdvertiseRoutes
		}
		json.NewEncoder(w).Encode(&ipn.Prefs{AdvertiseRoutes: f.routes})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

// Refuse makes every later edit of the settings fail with msg, as a
// tailscaled that cannot save them would.
func (f *Fake) Refuse(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = msg
}

// Advertised lists the advertised routes, separated by spaces.
func (f *Fake) Advertised() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.routes {
		out = append(out, p.String())
	}
	return strings.Join(out, " ")
}

// Calls is how many requests the fake has answered.
func (f *Fake) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}
