package runner

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// TestChangedWorkload: what apply says when it restarts a VM whose
// declared files, services or run_once changed; the list of files is
// short.
func TestChangedWorkload(t *testing.T) {
	file := func(path, sum string) config.File {
		return config.File{Path: path, Sum: sum, Mode: 0o644, Owner: "root", Group: "root"}
	}
	five := func(sum string) []config.File {
		var out []config.File
		for i := range 5 {
			out = append(out, file(fmt.Sprintf("/etc/app/%d.conf", i), sum))
		}
		return out
	}
	tests := []struct {
		name   string
		change func(vm *config.VM)
		want   string
	}{
		{"content", func(vm *config.VM) { vm.Files[0].Sum = "b" }, "files changed: /etc/nginx/sites-enabled/default"},
		{"mode", func(vm *config.VM) { vm.Files[0].Mode = 0o600 }, "files changed: /etc/nginx/sites-enabled/default"},
		{"owner", func(vm *config.VM) { vm.Files[0].Owner = "www-data" }, "files changed: /etc/nginx/sites-enabled/default"},
		{"group", func(vm *config.VM) { vm.Files[0].Group = "adm" }, "files changed: /etc/nginx/sites-enabled/default"},
		{"a file added", func(vm *config.VM) { vm.Files = append(vm.Files, file("/srv/www/index.html", "c")) }, "files changed: /srv/www/index.html"},
		{"a file taken out", func(vm *config.VM) { vm.Files = nil }, "files changed: /etc/nginx/sites-enabled/default"},
		{"many files", func(vm *config.VM) { vm.Files = append(vm.Files, five("d")...) }, "files changed: /etc/app/0.conf, /etc/app/1.conf, /etc/app/2.conf and 2 more"},
		{"services", func(vm *config.VM) { vm.Services = append(vm.Services, "redis-server.service") }, "services nginx.service -> nginx.service redis-server.service"},
		{"disable_services", func(vm *config.VM) { vm.DisableServices = []string{"exim4.service"} }, "disable_services (none) -> exim4.service"},
		{"run_once", func(vm *config.VM) { vm.RunOnce = []string{"echo again"} }, "run_once changed"},
		{"run_once taken out", func(vm *config.VM) { vm.RunOnce = nil }, "run_once changed"},
		{"run_once: one command split in two", func(vm *config.VM) { vm.RunOnce = []string{"echo", "first"} }, "run_once changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, vm := load(t, "")
			vm.Files = []config.File{file("/etc/nginx/sites-enabled/default", "a")}
			vm.Services = []string{"nginx.service"}
			vm.RunOnce = []string{"echo first"}
			was := Settings(in, vm)
			changed := *vm
			changed.Files = append([]config.File{}, vm.Files...)
			tt.change(&changed)
			got := strings.Join(Changed(was, Settings(in, &changed)), "; ")
			if got != tt.want {
				t.Errorf("Changed = %q, want %q", got, tt.want)
			}
		})
	}
	// The mode's setuid bits count too: "0755" and "04755" differ.
	in, vm := load(t, "")
	vm.Files = []config.File{file("/etc/x", "a")}
	was := Settings(in, vm)
	vm.Files[0].Mode |= fs.ModeSetuid
	if c := Changed(was, Settings(in, vm)); len(c) != 1 {
		t.Errorf("a setuid bit: Changed = %q", c)
	}
}
