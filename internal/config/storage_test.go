package config

import (
	"reflect"
	"testing"
)

// TestStorageKeys: the storage keys' defaults, and what a valid file sets.
func TestStorageKeys(t *testing.T) {
	const vm = "\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n"
	tests := []struct {
		name string
		host string
		want Host // only the storage fields are compared
	}{
		{"defaults", ``, Host{Storage: "dir", ZFSDataset: "rpool/microvms", KeepSnapshots: 5}},
		{"dir", `storage = "dir"`, Host{Storage: "dir", ZFSDataset: "rpool/microvms", KeepSnapshots: 5}},
		{"zfs", `storage = "zfs"`, Host{Storage: "zfs", ZFSDataset: "rpool/microvms", KeepSnapshots: 5}},
		{"zfs dataset", "storage = \"zfs\"\nzfs_dataset = \"tank/infra/vm_data-1.0:x\"", Host{Storage: "zfs", ZFSDataset: "tank/infra/vm_data-1.0:x", KeepSnapshots: 5}},
		{"keep none", "storage = \"zfs\"\nkeep_snapshots = 0", Host{Storage: "zfs", ZFSDataset: "rpool/microvms", KeepSnapshots: 0}},
		{"keep most", "storage = \"zfs\"\nkeep_snapshots = 1000", Host{Storage: "zfs", ZFSDataset: "rpool/microvms", KeepSnapshots: 1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := Parse("x.toml", []byte("[host]\nuplink = \"eth0\"\n"+tt.host+"\n"+vm))
			if err != nil {
				t.Fatal(err)
			}
			h := in.Host
			got := Host{Storage: h.Storage, ZFSDataset: h.ZFSDataset, KeepSnapshots: h.KeepSnapshots}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
