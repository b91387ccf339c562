package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// defaultInit is the image's init, which microvm-init hands over to:
// systemd in the Debian image.
const defaultInit = "/sbin/init"

// hostNameMax is the longest hostname sethostname(2) takes (HOST_NAME_MAX).
const hostNameMax = 64

// Config is what the kernel command line tells the init about its VM. The
// host writes it (vmm.Cmdline); these are the words it reads:
//
//	microvm.name=NAME       the hostname
//	microvm.ip=ADDR/BITS    eth0's IPv4 address and prefix length
//	microvm.gw=ADDR         the IPv4 default gateway, in eth0's subnet
//	microvm.dns=ADDR        the IPv4 address of the DNS resolver
//	microvm.init=PATH       optional: the program to hand over to (tests)
//	microvm.image=rw        optional: the image share is the VM's own writable overlay (image_writable)
//	microvm.volume=NAME:DIR optional, once per volume: mount the block device whose serial is NAME (ext4) at DIR
type Config struct {
	Name    string
	Addr    netip.Prefix
	Gateway netip.Addr
	DNS     netip.Addr
	Init    string
	ImageRW bool
	Volumes []volume
}

// volume is a block device to mount.
type volume struct{ name, dir string }

// required are the words every command line must have, each once.
var required = []string{"microvm.name", "microvm.ip", "microvm.gw", "microvm.dns"}

// parseCmdline reads a kernel command line, as /proc/cmdline has it. Words
// it does not know are the kernel's, or QEMU's (virtio_mmio.device=...),
// and are ignored; a word of its own that is missing, given twice or not
// valid is an error. All such problems are reported together, so that one
// boot shows everything wrong with the line.
func parseCmdline(line string) (Config, error) {
	values := map[string]string{}
	var errs []error
	var volumes []volume
	for _, word := range strings.Fields(line) {
		key, value, _ := strings.Cut(word, "=")
		if key == "microvm.volume" {
			name, dir, ok := strings.Cut(value, ":")
			if !ok || name == "" || !strings.HasPrefix(dir, "/") || strings.Contains(dir, "..") {
				errs = append(errs, fmt.Errorf("microvm.volume=%q is not NAME:/DIR", value))
				continue
			}
			volumes = append(volumes, volume{name, dir})
			continue
		}
		if key != "microvm.init" && key != "microvm.image" && !slices.Contains(required, key) {
			continue
		}
		if _, dup := values[key]; dup {
			errs = append(errs, fmt.Errorf("%s is given twice", key))
			continue
		}
		values[key] = value
	}
	var missing []string
	for _, key := range required {
		if _, ok := values[key]; !ok {
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("missing %s", strings.Join(missing, ", ")))
	}

	c := Config{Name: values["microvm.name"], Init: defaultInit}
	if v, ok := values["microvm.name"]; ok && (v == "" || len(v) > hostNameMax || strings.ContainsAny(v, "/\x00")) {
		errs = append(errs, fmt.Errorf("microvm.name=%q is not a hostname (1 to %d characters)", v, hostNameMax))
	}
	if v, ok := values["microvm.ip"]; ok {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 31 {
			errs = append(errs, fmt.Errorf("microvm.ip=%q is not an IPv4 address with a prefix length of 1 to 31 (10.1.0.2/24)", v))
		} else {
			c.Addr = p
		}
	}
	if v, ok := values["microvm.gw"]; ok {
		a, err := netip.ParseAddr(v)
		switch {
		case err != nil || !a.Is4():
			errs = append(errs, fmt.Errorf("microvm.gw=%q is not an IPv4 address", v))
		// The default route goes through the gateway, which eth0 must
		// reach directly: a gateway outside its subnet is a mistake.
		case c.Addr.IsValid() && !c.Addr.Masked().Contains(a):
			errs = append(errs, fmt.Errorf("microvm.gw=%s is not in the subnet of microvm.ip=%s", a, c.Addr))
		case a == c.Addr.Addr():
			errs = append(errs, fmt.Errorf("microvm.gw=%s is the VM's own address", a))
		default:
			c.Gateway = a
		}
	}
	if v, ok := values["microvm.dns"]; ok {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("microvm.dns=%q is not an IPv4 address", v))
		}
		c.DNS = a
	}
	if v, ok := values["microvm.init"]; ok {
		if !strings.HasPrefix(v, "/") {
			errs = append(errs, fmt.Errorf("microvm.init=%q is not an absolute path", v))
		}
		c.Init = v
	}
	if v, ok := values["microvm.image"]; ok {
		if v != "rw" {
			errs = append(errs, fmt.Errorf("microvm.image=%q is not rw, the one value it takes", v))
		}
		c.ImageRW = v == "rw"
	}
	c.Volumes = volumes
	if len(errs) > 0 {
		return Config{}, joinErrors(errs)
	}
	return c, nil
}

// joinErrors joins errs with "; ": the failure is printed on one line.
func joinErrors(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}
