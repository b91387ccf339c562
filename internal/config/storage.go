package config

// Storage names: the ZFS datasets of storage = "zfs" (package storage).
// Derived here, like every other name.
//
//	ZFS_DATASET               STATE_DIR (the admin key lives in it)
//	ZFS_DATASET/images        STATE_DIR/images
//	ZFS_DATASET/images/IMAGE  STATE_DIR/images/IMAGE, one image, read-only once built
//	ZFS_DATASET/NAME          STATE_DIR/NAME, the VM's etc and var
//
// The children inherit their mount points from the parent, so each dataset
// is mounted exactly where the dir backend keeps the same files.

// VMDataset is the ZFS dataset holding vm's etc and var.
func (h Host) VMDataset(vm *VM) string { return h.ZFSDataset + "/" + vm.Name }

// ImagesDataset is the ZFS dataset holding every image (ImagesDir).
func (h Host) ImagesDataset() string { return h.ZFSDataset + "/images" }

// ImageDataset is the ZFS dataset of the image called name (ImageDir).
func (h Host) ImageDataset(name string) string { return h.ImagesDataset() + "/" + name }

// ImageStagingDataset is where the image called name is made, before it
// is renamed to ImageDataset. No image name has a '.', so it names no image.
func (h Host) ImageStagingDataset(name string) string { return h.ImageDataset(name) + ".new" }

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
