package storage

import (
	"reflect"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// TestZFSDiff compares the model's datasets with a host read into a value,
// without root or ZFS: what is missing is made, parent first; what is not
// mounted is mounted; a VM dataset that honours setuid bits is made inert;
// a dataset of a VM that left the file is kept, with a warning; and files
// where a dataset goes, a dataset mounted elsewhere or a mount this process
// does not see stop the plan with what to do.
func TestZFSDiff(t *testing.T) {
	in := model(t, "/var/lib/microvms", "storage = \"zfs\"\nzfs_dataset = \"tank/microvms\"", "vm1", "vm2")
	z := For(in.Host).(*ZFS)
	dirs := []string{"/var/lib/microvms", "/var/lib/microvms/images", "/var/lib/microvms/vm1", "/var/lib/microvms/vm2"}
	applied := func() *zfsHost {
		o := &zfsHost{datasets: map[string]dataset{
			"tank/microvms":               {mountpoint: dirs[0], mounted: true},
			"tank/microvms/images":        {mountpoint: dirs[1], mounted: true},
			"tank/microvms/vm1":           {mountpoint: dirs[2], mounted: true, inert: true, refquota: 20 << 30},
			"tank/microvms/vm2":           {mountpoint: dirs[3], mounted: true, inert: true, refquota: 20 << 30},
			"tank/microvms/images/debian": {mountpoint: dirs[1] + "/debian", mounted: true},
		}, empty: map[string]bool{}, seen: map[string]bool{}}
		for _, d := range dirs {
			o.seen[d] = true
		}
		return o
	}
	fresh := func(o *zfsHost) {
		o.datasets = map[string]dataset{}
		o.seen = map[string]bool{}
		for _, d := range dirs {
			o.empty[d] = true
		}
	}
	for _, tt := range []struct {
		name     string
		edit     func(o *zfsHost)
		want     []string
		warnings []string
		err      string // what the error says; "" for none
	}{
		{"a fresh pool", fresh, []string{
			"zfs create -o mountpoint=/var/lib/microvms -o compression=on tank/microvms",
			"zfs create tank/microvms/images",
			"zfs create -o setuid=off -o devices=off -o refquota=20G tank/microvms/vm1",
			"zfs create -o setuid=off -o devices=off -o refquota=20G tank/microvms/vm2",
		}, nil, ""},
		{"applied", func(o *zfsHost) {}, []string{}, nil, ""},
		{"a new VM", func(o *zfsHost) {
			delete(o.datasets, "tank/microvms/vm2")
			o.empty[dirs[3]] = true
		}, []string{"zfs create -o setuid=off -o devices=off -o refquota=20G tank/microvms/vm2"}, nil, ""},
		{"not mounted after a reboot", func(o *zfsHost) {
			for _, name := range []string{"tank/microvms/vm2", "tank/microvms/images/debian"} {
				ds := o.datasets[name]
				ds.mounted = false
				o.datasets[name] = ds
			}
		}, []string{"zfs mount tank/microvms/vm2", "zfs mount tank/microvms/images/debian"}, nil, ""},
		{"vm1 honours setuid bits", func(o *zfsHost) {
			o.datasets["tank/microvms/vm1"] = dataset{mountpoint: dirs[2], mounted: true, refquota: 20 << 30}
		}, []string{"zfs set setuid=off tank/microvms/vm1", "zfs set devices=off tank/microvms/vm1"}, nil, ""},
		{"vm2 has no disk limit yet", func(o *zfsHost) {
			ds := o.datasets["tank/microvms/vm2"]
			ds.refquota, ds.referenced = 0, 3<<30
			o.datasets["tank/microvms/vm2"] = ds
		}, []string{"zfs set refquota=20G tank/microvms/vm2"}, nil, ""},
		{"vm2 holds more than its disk", func(o *zfsHost) {
			ds := o.datasets["tank/microvms/vm2"]
			ds.refquota, ds.referenced = 0, 25<<30
			o.datasets["tank/microvms/vm2"] = ds
		}, []string{}, []string{`vm2 holds 25.0G, more than its disk = "20G": its limit stays none until it holds less, or disk is raised`}, ""},
		{"a dataset that is no image is not mounted", func(o *zfsHost) {
			o.datasets["tank/microvms/images/.new"] = dataset{mountpoint: dirs[1] + "/.new"}
		}, []string{}, nil, ""},
		{"vm3 left the file", func(o *zfsHost) {
			o.datasets["tank/microvms/vm3"] = dataset{mountpoint: "/var/lib/microvms/vm3", mounted: true, inert: true}
		}, []string{}, []string{"dataset tank/microvms/vm3 (/var/lib/microvms/vm3) is not a VM of infra.toml; its data is kept (zfs destroy -r tank/microvms/vm3 deletes it)"}, ""},
		{"files where vm2's dataset goes", func(o *zfsHost) {
			delete(o.datasets, "tank/microvms/vm2")
			o.empty[dirs[3]] = false
		}, nil, nil, "/var/lib/microvms/vm2 already holds files"},
		{"the parent mounted elsewhere", func(o *zfsHost) { o.datasets["tank/microvms"] = dataset{mountpoint: "/srv", mounted: true} },
			nil, nil, "infra.toml:3:1: dataset tank/microvms is mounted at /srv, not at /var/lib/microvms"},
		{"mounted where this process does not see it", func(o *zfsHost) { o.seen[dirs[2]] = false },
			nil, nil, "ZFS mounted dataset tank/microvms/vm1 at /var/lib/microvms/vm1, but not in the mount namespace"},
	} {
		o := applied()
		tt.edit(o)
		d, err := z.diff(in, o)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: got %q, error %v; want an error with %q", tt.name, strs(d.Setup), err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := strs(d.Setup); !reflect.DeepEqual(got, tt.want) || !reflect.DeepEqual(d.Warnings, tt.warnings) {
			t.Errorf("%s:\ngot  %q, warnings %q\nwant %q, warnings %q", tt.name, got, d.Warnings, tt.want, tt.warnings)
		}
		if len(d.Cleanup)+len(d.Notes) > 0 {
			t.Errorf("%s: cleanup %v, notes %q; want none", tt.name, d.Cleanup, d.Notes)
		}
	}
}

// TestZFSDiffVolumes: a VM's volumes are files in its dataset, so their
// sizes are added to its refquota; one that holds more is warned of with
// them.
func TestZFSDiffVolumes(t *testing.T) {
	in := model(t, "/var/lib/microvms", "storage = \"zfs\"\nzfs_dataset = \"tank/microvms\"", "vm1")
	in.VMs[0].Volumes = []config.Volume{{Name: "data", Size: 4 << 30}, {Name: "logs", Size: 512 << 20}}
	z := For(in.Host).(*ZFS)
	dirs := []string{"/var/lib/microvms", "/var/lib/microvms/images", "/var/lib/microvms/vm1"}
	o := &zfsHost{datasets: map[string]dataset{
		"tank/microvms":        {mountpoint: dirs[0], mounted: true},
		"tank/microvms/images": {mountpoint: dirs[1], mounted: true},
		"tank/microvms/vm1":    {mountpoint: dirs[2], mounted: true, inert: true, refquota: 20 << 30, referenced: 1 << 30},
	}, empty: map[string]bool{}, seen: map[string]bool{}}
	for _, d := range dirs {
		o.seen[d] = true
	}
	d, err := z.diff(in, o)
	if err != nil {
		t.Fatal(err)
	}
	// 20G and 4.5G of volumes, in the largest unit that divides it.
	want := []string{"zfs set refquota=25088M tank/microvms/vm1"}
	if got := strs(d.Setup); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	ds := o.datasets["tank/microvms/vm1"]
	ds.refquota, ds.referenced = 20<<30, 25<<30
	o.datasets["tank/microvms/vm1"] = ds
	d, err = z.diff(in, o)
	if err != nil {
		t.Fatal(err)
	}
	wantWarn := []string{`vm1 holds 25.0G, more than its disk = "20G" and 4608M of volumes: its limit stays 20G until it holds less, or disk is raised`}
	if len(d.Setup) > 0 || !reflect.DeepEqual(d.Warnings, wantWarn) {
		t.Errorf("got %q, warnings %q; want none, warnings %q", strs(d.Setup), d.Warnings, wantWarn)
	}
}

// TestNeeds keeps, of a plan's storage actions, only those a VM needs to
// start: another VM's dataset, made, mounted or made inert, does not stop it.
func TestNeeds(t *testing.T) {
	in := model(t, "/var/lib/microvms", "storage = \"zfs\"\nzfs_dataset = \"tank/microvms\"", "vm1", "vm2")
	acts := []action.Action{
		&CreateDataset{Name: "tank/microvms"},
		&CreateDataset{Name: "tank/microvms/vm2", Props: vmProps},
		&SetProp{Name: "tank/microvms/vm2", Prop: "setuid=off"},
		&MountDataset{Name: "tank/microvms/vm1"},
		&SetProp{Name: "tank/microvms/vm1", Prop: "devices=off"},
		&MountDataset{Name: "tank/microvms/images/debian"},
		&MountDataset{Name: "tank/microvms/images/other"},
	}
	want := []string{"zfs create tank/microvms", "zfs mount tank/microvms/vm1", "zfs set devices=off tank/microvms/vm1", "zfs mount tank/microvms/images/debian"}
	if got := strs(Needs(in.Host, &in.VMs[0], in.VMs[0].Image, acts)); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}
