package runner

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// noRestart lists the fields of config.VM that do not reach Settings, and
// why a change to them needs no restart. A field that is on neither side
// fails TestSettingsCoverVM, so a new one is a decision, never forgotten.
var noRestart = map[string]string{
	"Name":       "a new name is another VM",
	"Gateway":    "derived from Subnet, which is in Settings",
	"Addr":       "derived from Subnet, which is in Settings",
	"Gateway6":   "derived from Subnet6, which is in Settings",
	"Addr6":      "derived from Subnet6, which is in Settings",
	"LinkLocal6": "derived from MAC, which is in Settings",
	"Bridge":     "derived from Name",
	"TAP":        "derived from Name",
	"Autostart":  "says whether the VM starts, not how it runs",
	"Host":       "says which host of a fleet runs the VM, not how it runs; a move restarts it there",
	"Allow":      "in the firewall, which apply changes under a running VM",
	"Publish":    "in the firewall, which apply changes under a running VM",
	"StateDir":   "derived from Name and the host's state_dir",
	"EtcDir":     "derived from StateDir",
	"VarDir":     "derived from StateDir",
	"RunDir":     "derived from Name and the host's run_dir",
	// Limits: what its cgroup is made with, and its disk.
	"Limits.MemoryMiB": "derived from MemoryMiB, Hypervisor and the host's accel, which are in Settings",
	"Limits.Pids":      "derived from VCPU, which is in Settings",
	"Limits.CPUWeight": "derived from VCPU, which is in Settings",
	"Limits.DiskBytes": "the storage's quota, which apply changes under a running VM",
}

// Every field of config.VM either changes the settings a VM was started
// with (so update and apply restart it) or is on noRestart.
func TestSettingsCoverVM(t *testing.T) {
	in, vm := load(t, "")
	base := Settings(in, vm)
	typ := reflect.TypeOf(*vm)
	// Every field, and every field of the struct fields (Limits) by
	// itself, as "Limits.Pids".
	type field struct {
		name string
		path []int
	}
	var fields []field
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == typ.PkgPath() {
			for j := range f.Type.NumField() {
				fields = append(fields, field{f.Name + "." + f.Type.Field(j).Name, []int{i, j}})
			}
			continue
		}
		fields = append(fields, field{f.Name, []int{i}})
	}
	for _, f := range fields {
		changed := *vm
		if v := reflect.ValueOf(&changed).Elem().FieldByIndex(f.path); !change(v) {
			t.Errorf("config.VM.%s is a %s, which this test cannot change yet: teach change() how", f.name, v.Type())
			continue
		}
		restarts := !maps.Equal(base, Settings(in, &changed))
		_, listed := noRestart[f.name]
		switch {
		case !restarts && !listed:
			t.Errorf("a change to config.VM.%s does not restart the VM: put it in runner.Settings, or on noRestart saying why", f.name)
		case restarts && listed:
			t.Errorf("config.VM.%s reaches Settings: take it off noRestart", f.name)
		}
	}
	for name := range noRestart {
		if !slices.ContainsFunc(fields, func(f field) bool { return f.name == name }) {
			t.Errorf("noRestart names %s, which config.VM no longer has", name)
		}
	}
}

// change sets v to another value of its type, and reports whether it knew
// how.
func change(v reflect.Value) bool {
	switch x := v.Interface().(type) {
	case netip.Prefix:
		v.Set(reflect.ValueOf(netip.PrefixFrom(x.Addr().Next(), x.Bits()-1)))
		return true
	case netip.Addr:
		v.Set(reflect.ValueOf(x.Next()))
		return true
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "x")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Uint8:
		v.SetUint(v.Uint() + 1)
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Slice:
		elem := reflect.New(v.Type().Elem()).Elem()
		if elem.Kind() != reflect.Struct && !change(elem) {
			return false
		}
		v.Set(reflect.Append(reflect.Zero(v.Type()), append(sliceOf(v), elem)...))
	default:
		return false
	}
	return true
}

func sliceOf(v reflect.Value) []reflect.Value {
	out := make([]reflect.Value, v.Len())
	for i := range out {
		out[i] = v.Index(i)
	}
	return out
}
