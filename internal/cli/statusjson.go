package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/firewall"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/tailscale"
)

// statusDoc is status --json.
type statusDoc struct {
	Version int         `json:"version" doc:"the version of this document's format"`
	File    string      `json:"file" doc:"the infra.toml read"`
	VMs     []statusRow `json:"vms" doc:"the VMs named, or all of the file's, by name"`
	Host    *hostDoc    `json:"host,omitempty" doc:"with --host: the host's side"`
}

// hostDoc is the host's side of status --host --json.
type hostDoc struct {
	Storage   string       `json:"storage" doc:"dir or zfs"`
	StateDir  string       `json:"state_dir"`
	Disk      *diskDoc     `json:"disk,omitempty" doc:"absent when disk use cannot be read; disk_error says why"`
	DiskError string       `json:"disk_error,omitempty"`
	Tailscale tailscaleDoc `json:"tailscale"`
	Egress    []vmEgress   `json:"egress" doc:"each VM with an egress list: its names, and the addresses it may reach now (needs root)"`
	Limits    []limitsDoc  `json:"limits" doc:"each VM's limits, and what it takes of them while it runs"`
}

// vmEgress is one VM with an egress list.
type vmEgress struct {
	VM    string      `json:"vm"`
	Names []string    `json:"names"`
	Now   []egressDoc `json:"now" doc:"the addresses the resolver let it reach, for which name, and for how long"`
}

// egressDoc is an address a VM may reach now.
type egressDoc struct {
	Addr           string `json:"addr"`
	Name           string `json:"name" doc:"the name whose answer it was"`
	ExpiresSeconds int64  `json:"expires_seconds" doc:"how long it stays reachable, unless the VM asks again"`
}

// diskDoc is disk use in bytes, against the design's "under 10 GB".
type diskDoc struct {
	ImagesBytes int64 `json:"images_bytes" doc:"every image"`
	VMsBytes    int64 `json:"vms_bytes" doc:"every VM of the file: its /etc and /var (on ZFS with its snapshots)"`
	TotalBytes  int64 `json:"total_bytes" doc:"all of state_dir"`
}

// tailscaleDoc is where the VM subnets stand in the tailnet.
type tailscaleDoc struct {
	Enabled     string     `json:"enabled" doc:"auto, true or false, from [host.tailscale]"`
	Socket      string     `json:"socket" doc:"tailscaled's local API socket"`
	Down        string     `json:"down,omitempty" doc:"why tailscaled cannot take routes (not running, disabled)"`
	Problem     string     `json:"problem,omitempty" doc:"why the routes do not reach the tailnet (logged out)"`
	State       string     `json:"state,omitempty" doc:"tailscaled's state, e.g. Running"`
	HostName    string     `json:"host_name,omitempty" doc:"this host's name in the tailnet"`
	Addresses   []string   `json:"addresses" doc:"this host's tailnet addresses"`
	ControlURL  string     `json:"control_url,omitempty"`
	Routes      []routeDoc `json:"routes" doc:"one per VM subnet"`
	OtherRoutes []string   `json:"other_routes" doc:"routes advertised for other reasons, which apply keeps"`
	OK          bool       `json:"ok" doc:"every VM subnet is advertised and approved"`
}

// routeDoc is one VM subnet in the tailnet.
type routeDoc struct {
	VM         string `json:"vm"`
	Subnet     string `json:"subnet"`
	Advertised bool   `json:"advertised" doc:"in tailscaled's advertised routes"`
	Approved   bool   `json:"approved" doc:"approved by the control server"`
}

func statusJSON(in *config.Infra, rows []statusRow, host bool, u storage.Usage, uerr error, limits []limitsDoc) statusDoc {
	d := statusDoc{Version: jsonVersion, File: in.File, VMs: rows}
	if d.VMs == nil {
		d.VMs = []statusRow{}
	}
	if !host {
		return d
	}
	h := &hostDoc{Storage: string(in.Host.Storage), StateDir: in.Host.StateDir, Limits: limits}
	if h.Limits == nil {
		h.Limits = []limitsDoc{}
	}
	if uerr == nil {
		disk := &diskDoc{ImagesBytes: u.Images, TotalBytes: u.Total}
		for _, b := range u.VMs {
			disk.VMsBytes += b
		}
		h.Disk = disk
	} else {
		h.DiskError = uerr.Error()
	}
	r := tailscale.Status(context.Background(), in)
	h.Tailscale = tailscaleDoc{Enabled: string(r.Enabled), Socket: r.Socket, Down: r.Down, Problem: r.Problem,
		State: r.State, HostName: r.Host, ControlURL: r.Control, OK: r.OK(),
		Addresses: []string{}, Routes: []routeDoc{}, OtherRoutes: []string{}}
	for _, a := range r.Addrs {
		h.Tailscale.Addresses = append(h.Tailscale.Addresses, a.String())
	}
	for _, rt := range r.Routes {
		h.Tailscale.Routes = append(h.Tailscale.Routes, routeDoc{VM: rt.VM, Subnet: rt.Subnet.String(), Advertised: rt.Advertised, Approved: rt.Approved})
	}
	for _, p := range r.Others {
		h.Tailscale.OtherRoutes = append(h.Tailscale.OtherRoutes, p.String())
	}
	h.Egress = []vmEgress{}
	now, _ := egressNow() // none when the table cannot be read: status says what the firewall lets through
	for _, vm := range in.VMs {
		if vm.HasEgress() {
			h.Egress = append(h.Egress, vmEgress{VM: vm.Name, Names: config.EgressNames(vm.Egress), Now: orEmptyEgress(now[vm.Name])})
		}
	}
	d.Host = h
	return d
}

// egressNow reads the addresses each VM may reach now, by VM name, from
// the firewall's sets.
func egressNow() (map[string][]egressDoc, error) {
	sets, err := firewall.EgressAddrs()
	if err != nil {
		return nil, err
	}
	out := map[string][]egressDoc{}
	for bridge, list := range sets {
		name := strings.TrimPrefix(bridge, "br-") // the bridge of VM NAME is br-NAME
		for _, a := range list {
			out[name] = append(out[name], egressDoc{Addr: a.Addr.String(), Name: a.Name, ExpiresSeconds: int64(a.Expires.Seconds())})
		}
	}
	for _, list := range out {
		sort.Slice(list, func(i, j int) bool {
			if list[i].Name != list[j].Name {
				return list[i].Name < list[j].Name
			}
			return list[i].Addr < list[j].Addr
		})
	}
	return out, nil
}

func orEmptyEgress(l []egressDoc) []egressDoc {
	if l == nil {
		return []egressDoc{}
	}
	return l
}

// egressText writes the addresses a VM may reach: "www.example.com
// 203.0.113.20 (55s), 2001:db8::20 (55s)".
func egressText(list []egressDoc) string {
	var parts []string
	last := ""
	for _, a := range list {
		s := fmt.Sprintf("%s (%ds)", a.Addr, a.ExpiresSeconds)
		if a.Name != last {
			s = a.Name + " " + s
			last = a.Name
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}
