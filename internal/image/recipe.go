package image

import (
	"fmt"
	"slices"
	"strings"
)

// Recipes are the images Build knows how to make, by name. Any other root
// filesystem comes in with Import.
var Recipes = []string{"debian"}

// CheckRecipe returns an error unless Build has a recipe for name, so that
// `image build ubuntu` does not quietly make Debian and call it ubuntu.
func CheckRecipe(name string) error {
	if slices.Contains(Recipes, name) {
		return nil
	}
	return fmt.Errorf("there is no recipe for an image called %q; image build makes %s. Any other root filesystem comes in as a tarball: microvm image import %s ROOTFS.tar.gz",
		name, strings.Join(Recipes, ", "), name)
}
