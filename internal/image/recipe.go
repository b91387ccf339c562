package image

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// A Recipe is what Build makes an image from: the packages debootstrap
// installs on top of its minbase variant (dpkg, apt and the Essential
// packages; debootstrap adds the packages' dependencies, not what they
// recommend), and what is done to the tree after the preparation every
// image gets (postProcess). Build makes the image of the same name.
type Recipe struct {
	Name  string // the image it makes: microvm image build NAME
	About string // one line for people
	// Version changes whenever what the recipe makes changes. It is kept
	// in the image's metadata (Meta), so that an image made by an older
	// recipe is told from a new one.
	Version  int
	Packages []string
	// Tune is the recipe's own last step, given the tree through an
	// os.Root; nil for none.
	Tune func(root *os.Root) error
}

// Recipes are the images Build can make, the default first.
var Recipes = []Recipe{
	{
		Name:    "debian",
		About:   "Debian 12 for microVMs: systemd, journald, OpenSSH and apt; only what a server needs on its way to SSH (docs/guest.md)",
		Version: 3,
		Packages: []string{
			"systemd", "systemd-sysv",
			"openssh-server",
			"linux-image-cloud-amd64",
			// The ACPI power button, which is how Cloud Hypervisor asks
			// the guest to shut down: acpid runs poweroff (systemd-logind
			// would, but needs D-Bus, which this image leaves out).
			"acpid",
			"iproute2", "iputils-ping", "netcat-openbsd", "curl", "ca-certificates", "procps",
		},
		Tune: lean,
	},
	{
		Name:    "debian-full",
		About:   "Debian 12 as debootstrap and its units make it: udev, D-Bus, logind, every timer (the image before the lean one; a baseline)",
		Version: 1,
		Packages: []string{
			// The guest's init: /sbin/init is systemd.
			"systemd", "systemd-sysv",
			// Device units (serial-getty@ttyS0 waits for dev-ttyS0.device), and
			// the "power-switch" tag logind looks for on the power button.
			"udev",
			// systemd-logind needs D-Bus; logind powers the guest off on the ACPI
			// power button, which is how both VMMs ask a guest to shut down.
			"dbus",
			// `microvm ssh` and `ssh root@10.1.0.2`.
			"openssh-server",
			// The kernel every VM of the image boots, and its modules.
			"linux-image-cloud-amd64",
			// What a person, and the end-to-end tests, use to look at the network.
			"iproute2", "iputils-ping", "netcat-openbsd", "curl", "ca-certificates", "procps",
		},
	},
}

// RecipeNames are the images Build can make, the default first.
func RecipeNames() []string {
	names := make([]string, len(Recipes))
	for i, r := range Recipes {
		names[i] = r.Name
	}
	return names
}

// FindRecipe returns the recipe of the image name, or an error that says
// what can be built instead, so that `image build ubuntu` does not quietly
// make Debian and call it ubuntu.
func FindRecipe(name string) (Recipe, error) {
	i := slices.IndexFunc(Recipes, func(r Recipe) bool { return r.Name == name })
	if i < 0 {
		return Recipe{}, fmt.Errorf("there is no recipe for an image called %q; image build makes %s. Any other root filesystem comes in as a tarball: microvm image import %s ROOTFS.tar.gz",
			name, strings.Join(RecipeNames(), ", "), name)
	}
	return Recipes[i], nil
}
