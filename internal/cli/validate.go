package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

func validateCmd() *command {
	var asJSON bool
	return &command{
		name:  "validate",
		args:  "[-f FILE] [--json]",
		short: "check infra.toml and show what it derives",
		long: `
Reads infra.toml, reports every problem with file:line:col and what to write
instead (each on a line of its own, as compilers do, so an editor can jump
to it), and prints the derived network of each VM. It touches nothing and
needs no root.

Examples:
  microvm validate
  microvm validate -f examples/infra.toml
  microvm validate --json          the derived model, or the problems, for scripts`,
		flags: func(fs *pflag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print the model, or the problems, as JSON (docs/cli.md)")
		},
		run: func(e *env, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			in, err := e.load()
			if asJSON {
				if err := printJSON(e.stdout, validateJSON(e.file, in, err)); err != nil {
					return err
				}
				if err != nil {
					return exitStatus(1)
				}
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: ok, %d VMs, uplink %s\n", in.File, len(in.VMs), in.Host.Uplink)
			for _, img := range in.Images {
				fmt.Fprintf(e.stdout, "  image %s: %s\n", img.Name, img.Summary())
			}
			for _, vm := range in.VMs {
				fmt.Fprintf(e.stdout, "  %-8s %-15s gateway %-12s bridge %-10s tap %-10s mac %s  %d vCPU, %d MiB, %s, image %s\n",
					vm.Name, vm.Subnet, vm.Gateway, vm.Bridge, vm.TAP, vm.MAC, vm.VCPU, vm.MemoryMiB, vm.Hypervisor, vm.Image)
				if w := workload(&vm); w != "" {
					fmt.Fprintf(e.stdout, "  %-8s %s\n", "", w)
				}
			}
			return nil
		},
	}
}

// workload says in one line what runs in vm beyond its image, and what it
// may reach of other VMs; "" for a VM with none of it.
func workload(vm *config.VM) string {
	var parts []string
	if len(vm.Services) > 0 {
		parts = append(parts, "services "+strings.Join(vm.Services, " "))
	}
	if len(vm.DisableServices) > 0 {
		parts = append(parts, "disabled "+strings.Join(vm.DisableServices, " "))
	}
	if n := len(vm.Files); n > 0 {
		parts = append(parts, plural(n, "file"))
	}
	if n := len(vm.RunOnce); n > 0 {
		parts = append(parts, "run_once "+plural(n, "command"))
	}
	for _, a := range vm.Allow {
		if a.VM != "" {
			parts = append(parts, "allow "+a.String())
		}
	}
	for _, p := range vm.Publish {
		parts = append(parts, "publish "+p.String())
	}
	if vm.ImageWritable {
		parts = append(parts, "image writable")
	}
	for _, sec := range vm.Secrets {
		parts = append(parts, "secret "+sec.Name)
	}
	for _, v := range vm.Volumes {
		parts = append(parts, fmt.Sprintf("volume %s %s at %s", v.Name, humanSize(v.Size), v.Mount))
	}
	return strings.Join(parts, "; ")
}

// plural writes "1 file", "2 files".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// validateDoc is validate --json: the model, or what is wrong.
type validateDoc struct {
	Version int           `json:"version" doc:"the version of this document's format"`
	File    string        `json:"file" doc:"the infra.toml read"`
	OK      bool          `json:"ok" doc:"the file is valid; validate exits 1 when it is not"`
	Errors  []configError `json:"errors" doc:"every problem, in file order"`
	Host    *hostModel    `json:"host,omitempty" doc:"when ok: [host] with defaults filled in"`
	Images  []imageModel  `json:"images" doc:"when ok: the [image.NAME] tables, by name"`
	VMs     []vmModel     `json:"vms" doc:"when ok: every VM with what it derives, by name"`
}

// configError is one problem in infra.toml.
type configError struct {
	File    string `json:"file"`
	Line    int    `json:"line" doc:"0 when the file cannot be read"`
	Col     int    `json:"col"`
	Message string `json:"message" doc:"what is wrong and what to write instead"`
}

// hostModel is [host] with its defaults.
type hostModel struct {
	Uplink        string `json:"uplink"`
	StateDir      string `json:"state_dir"`
	RunDir        string `json:"run_dir"`
	User          string `json:"user"`
	Accel         string `json:"accel"`
	Storage       string `json:"storage"`
	ZFSDataset    string `json:"zfs_dataset,omitempty" doc:"with storage = \"zfs\""`
	KeepSnapshots int    `json:"keep_snapshots"`
	Tailscale     struct {
		Enabled          string `json:"enabled"`
		Socket           string `json:"socket"`
		AllowVMToTailnet bool   `json:"allow_vm_to_tailnet"`
	} `json:"tailscale"`
}

// imageModel is one [image.NAME].
type imageModel struct {
	Name     string   `json:"name"`
	From     string   `json:"from" doc:"a recipe or another declared image"`
	Packages []string `json:"packages"`
	Files    []string `json:"files" doc:"the paths it gets"`
	Run      []string `json:"run"`
}

// vmModel is one VM as infra.toml derives it.
type vmModel struct {
	Name       string   `json:"name"`
	Subnet     string   `json:"subnet"`
	Gateway    string   `json:"gateway" doc:"the host's address on the VM's bridge (.1)"`
	Address    string   `json:"address" doc:"the guest's address (.2)"`
	Bridge     string   `json:"bridge"`
	TAP        string   `json:"tap"`
	MAC        string   `json:"mac"`
	VCPU       int      `json:"vcpu"`
	MemoryMiB  int      `json:"memory_mib"`
	Hypervisor string   `json:"hypervisor"`
	Image      string   `json:"image"`
	DNS        string   `json:"dns"`
	SSHKeys    []string `json:"ssh_keys" doc:"authorized for root besides the host's admin key"`
	Autostart  bool     `json:"autostart"`
	StateDir   string   `json:"state_dir" doc:"its /etc and /var are here"`
	RunDir     string   `json:"run_dir" doc:"its sockets, pid files and logs are here"`

	Services        []string      `json:"services" doc:"units enabled in its /etc, with their suffix"`
	DisableServices []string      `json:"disable_services"`
	RunOnce         []string      `json:"run_once"`
	Files           []string      `json:"files" doc:"the guest paths written at every start"`
	Allow           []string      `json:"allow" doc:"what it may reach beyond the internet, besides [host] allow; vm:NAME entries open another VM"`
	Publish         []string      `json:"publish" doc:"ports of the host's uplink forwarded to it"`
	ImageWritable   bool          `json:"image_writable"`
	Secrets         []string      `json:"secrets" doc:"the names of its secrets, as the guest finds them in /run/credentials/microvm"`
	Volumes         []volumeModel `json:"volumes"`
}

// volumeModel is one volume.
type volumeModel struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Mount     string `json:"mount" doc:"where the guest mounts it"`
}

func modelOf(vm *config.VM) vmModel {
	keys := vm.SSHKeys
	if keys == nil {
		keys = []string{}
	}
	m := vmModel{Name: vm.Name, Subnet: vm.Subnet.String(), Gateway: vm.Gateway.String(), Address: vm.Addr.String(),
		Bridge: vm.Bridge, TAP: vm.TAP, MAC: vm.MAC.String(), VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB,
		Hypervisor: string(vm.Hypervisor), Image: vm.Image, DNS: vm.DNS, SSHKeys: keys, Autostart: vm.Autostart,
		StateDir: vm.StateDir, RunDir: vm.RunDir,
		Services: orEmpty(vm.Services), DisableServices: orEmpty(vm.DisableServices), RunOnce: orEmpty(vm.RunOnce),
		Files: []string{}, Allow: []string{}, Publish: []string{}, ImageWritable: vm.ImageWritable}
	for _, f := range vm.Files {
		m.Files = append(m.Files, f.Path)
	}
	for _, a := range vm.Allow {
		m.Allow = append(m.Allow, a.String())
	}
	for _, p := range vm.Publish {
		m.Publish = append(m.Publish, p.String())
	}
	m.Secrets, m.Volumes = []string{}, []volumeModel{}
	for _, sec := range vm.Secrets {
		m.Secrets = append(m.Secrets, sec.Name)
	}
	for _, v := range vm.Volumes {
		m.Volumes = append(m.Volumes, volumeModel{v.Name, v.Size, v.Mount})
	}
	return m
}

func imageModelOf(img *config.Image) imageModel {
	m := imageModel{Name: img.Name, From: img.From, Packages: orEmpty(img.Packages), Files: []string{}, Run: orEmpty(img.Run)}
	for _, f := range img.Files {
		m.Files = append(m.Files, f.Path)
	}
	return m
}

func validateJSON(file string, in *config.Infra, err error) validateDoc {
	d := validateDoc{Version: jsonVersion, File: file, OK: err == nil, Errors: []configError{}, VMs: []vmModel{}, Images: []imageModel{}}
	if err != nil {
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				line, col := max(e.Pos.Line, 1), max(e.Pos.Col, 1) // as Error() says it
				d.Errors = append(d.Errors, configError{File: e.File, Line: line, Col: col, Message: e.Msg})
			}
		} else {
			d.Errors = append(d.Errors, configError{File: file, Message: err.Error()})
		}
		return d
	}
	h := in.Host
	d.Host = &hostModel{Uplink: h.Uplink, StateDir: h.StateDir, RunDir: h.RunDir, User: h.User, Accel: string(h.Accel),
		Storage: string(h.Storage), KeepSnapshots: h.KeepSnapshots}
	if h.Storage == config.StorageZFS {
		d.Host.ZFSDataset = h.ZFSDataset
	}
	d.Host.Tailscale.Enabled = string(h.Tailscale.Enabled)
	d.Host.Tailscale.Socket = h.Tailscale.Socket
	d.Host.Tailscale.AllowVMToTailnet = h.Tailscale.AllowVMToTailnet
	for i := range in.VMs {
		d.VMs = append(d.VMs, modelOf(&in.VMs[i]))
	}
	for i := range in.Images {
		d.Images = append(d.Images, imageModelOf(&in.Images[i]))
	}
	return d
}
