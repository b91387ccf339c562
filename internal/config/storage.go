package config

// Storage names: the ZFS datasets of storage = "zfs" (package storage).
// Derived here, like every other name.
//
//	ZFS_DATASET         mounted at STATE_DIR (the admin key lives in it)
//	ZFS_DATASET/images  mounted at STATE_DIR/images, every image
//	ZFS_DATASET/NAME    mounted at STATE_DIR/NAME, the VM's etc and var
//
// The children inherit their mount points from the parent, so each dataset
// is mounted exactly where the dir backend keeps the same files.

// VMDataset is the ZFS dataset holding vm's etc and var.
func (h Host) VMDataset(vm *VM) string { return h.ZFSDataset + "/" + vm.Name }

// ImagesDataset is the ZFS dataset holding every image (ImagesDir).
func (h Host) ImagesDataset() string { return h.ZFSDataset + "/images" }

// ZFSPool is the pool ZFSDataset is in: the only pool the program touches,
// and it never creates or changes the pool itself.
func (h Host) ZFSPool() string {
	for i, c := range h.ZFSDataset {
		if c == '/' {
			return h.ZFSDataset[:i]
		}
	}
	return h.ZFSDataset
}
