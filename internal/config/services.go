package config

import (
	"fmt"
	"strings"
)

// What runs in a VM, besides what its image enables:
//
//	services = ["nginx", "fcgiwrap.socket"]   # enabled in the VM's /etc, as systemctl enable does
//	disable_services = ["exim4"]              # disabled there, although the image enables them
//	run_once = ["redis-cli set greeting hello"]
//
// A unit without a suffix is a .service. The host enables and disables
// them in the VM's own /etc at every start (package guest), from the unit
// files of the image. run_once commands run in the guest, in order, with
// /bin/sh -e, the first time the VM boots with this list (again when the
// list changes), after the VM's services have started.

// unitSuffixes are the unit types services may name.
var unitSuffixes = []string{".service", ".socket", ".timer", ".path", ".target", ".mount"}

// unitName checks a unit name and gives it its suffix.
func unitName(s string) (string, string) {
	if s == "" || len(s) > 255 {
		return "", "is not a unit name; e.g. \"nginx\" or \"fcgiwrap.socket\""
	}
	if c, ok := badRune(s, ":-_.@\\"); ok {
		return "", fmt.Sprintf("contains %q, which unit names do not; e.g. \"nginx\" or \"fcgiwrap.socket\"", c)
	}
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, ".") {
		return "", "is not a unit name; e.g. \"nginx\" or \"fcgiwrap.socket\""
	}
	if strings.HasSuffix(s, "@.service") || strings.HasSuffix(s, "@") {
		return "", "is a template; name an instance, e.g. \"getty@tty2.service\""
	}
	for _, suf := range unitSuffixes {
		if strings.HasSuffix(s, suf) {
			return s, ""
		}
	}
	if i := strings.LastIndexByte(s, '.'); i > 0 && !strings.Contains(s[i:], "@") {
		if strings.Trim(s[i+1:], "abcdefghijklmnopqrstuvwxyz") == "" {
			return "", fmt.Sprintf("has the unit type %q; name a %s unit", s[i:], strings.Join(unitSuffixes, ", "))
		}
	}
	return s + ".service", ""
}

// services reads services, disable_services and run_once into vm.
func (p *parser) services(vm *VM, vals map[string]*value, key string) {
	units := func(k string) []string {
		var out []string
		p.stringList(vals[k], key+"."+k, `e.g. `+k+` = ["nginx", "fcgiwrap.socket"]`, func(s string) string {
			u, msg := unitName(s)
			if msg == "" {
				out = append(out, u)
			}
			return msg
		})
		return out
	}
	vm.Services = units("services")
	vm.DisableServices = units("disable_services")
	for _, u := range vm.Services {
		for _, d := range vm.DisableServices {
			if u == d {
				p.errorf(vals["disable_services"].pos, "%s: %s is also in services; a unit is enabled or disabled, not both", key+".disable_services", u)
			}
		}
	}
	vm.RunOnce = p.stringList(vals["run_once"], key+".run_once", `e.g. run_once = ["redis-cli set greeting hello"]`, func(s string) string {
		if strings.TrimSpace(s) == "" {
			return "is empty; write a shell command, or remove it"
		}
		return ""
	})
}
