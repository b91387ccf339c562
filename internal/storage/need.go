package storage

import (
	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Needs keeps, of the storage actions acts (from Diff), those vm needs done
// before it starts, booting the image in the directory imageDir: with ZFS,
// the parent dataset, the images' dataset, its image's and its own, so
// that its data lands in its dataset. Another VM's dataset does not stop
// it.
func Needs(h config.Host, vm *config.VM, imageDir string, acts []action.Action) []action.Action {
	mine := map[string]bool{h.ZFSDataset: true, h.ImagesDataset(): true, h.ImageDataset(imageDir): true, h.VMDataset(vm): true}
	var out []action.Action
	for _, a := range acts {
		var name string
		switch a := a.(type) {
		case *CreateDataset:
			name = a.Name
		case *MountDataset:
			name = a.Name
		case *SetProp:
			name = a.Name
		}
		if name == "" || mine[name] {
			out = append(out, a)
		}
	}
	return out
}
