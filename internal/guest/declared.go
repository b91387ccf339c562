package guest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// What infra.toml declares for a VM is written into its /etc and /var at
// every start, after the merge of its image (Merge), through safedir like
// every other host write there:
//
//	[vm.NAME.files]   each file, with its mode and owner (the host's copy wins)
//	services          the units' symlinks in /etc/systemd/system, as systemctl enable makes them
//	disable_services  those symlinks removed
//	run_once          /etc/microvm/run-once.sh and its unit, microvm-run-once.service
//
// A file or unit that leaves infra.toml stays as it is in the VM: it is the
// VM's now (run_once's own unit and script go).

// WriteDeclared writes what infra.toml declares for vm into its trees.
// imageRoot is the root filesystem of the image it boots, where its units'
// files are.
func WriteDeclared(vm *config.VM, imageRoot string) error {
	etc, vars, err := openTrees(vm)
	if err != nil {
		return fmt.Errorf("writing %s's files: %w", vm.Name, err)
	}
	defer etc.Close()
	defer vars.Close()
	acc, err := readAccounts(etc)
	if err != nil {
		return fmt.Errorf("reading %s's users: %w", vm.Name, err)
	}
	for _, f := range vm.Files {
		if err := writeFile(etc, vars, acc, f); err != nil {
			return fmt.Errorf("writing %s: %w", f.Path, err)
		}
	}
	if err := enableUnits(etc, imageRoot, vm.Services, vm.DisableServices); err != nil {
		return err
	}
	if err := writeSecretsMount(etc, len(vm.Secrets) > 0); err != nil {
		return err
	}
	if err := writeVolumesUnit(etc, vm.Volumes); err != nil {
		return err
	}
	return writeRunOnce(etc, vm)
}

// Owner resolves a file's owner and group as vm's guest names them, from
// its own /etc/passwd and /etc/group (numbers as they are).
func Owner(vm *config.VM, owner, group string) (uid, gid int, err error) {
	etc, vars, err := openTrees(vm)
	if err != nil {
		return 0, 0, err
	}
	defer etc.Close()
	defer vars.Close()
	acc, err := readAccounts(etc)
	if err != nil {
		return 0, 0, err
	}
	return acc.ids(owner, group)
}

// The guest mounts its secrets' share (package secret) with a mount unit:
// early, before any service, at /run/credentials/microvm, which the init
// cannot do itself (systemd mounts /run over it).
const (
	secretsUnit = "run-credentials-microvm.mount"
	secretsLink = "systemd/system/local-fs.target.wants/" + secretsUnit
)

func writeSecretsMount(etc *safedir.Dir, has bool) error {
	unit := "systemd/system/" + secretsUnit
	if !has {
		for _, f := range []string{secretsLink, unit} {
			if err := etc.Remove(f); err != nil {
				return err
			}
		}
		return nil
	}
	text := `# Written by microvm: the VM's secrets, from the host's memory (never from a disk).
[Unit]
Description=secrets of infra.toml
DefaultDependencies=no
Before=local-fs.target

[Mount]
What=secrets
Where=` + config.SecretsDir + `
Type=virtiofs
Options=ro,nosuid,nodev,noexec

[Install]
WantedBy=local-fs.target
`
	dir, err := etc.MkdirAll("systemd/system", 0o755)
	if err != nil {
		return err
	}
	dir.Close()
	if err := etc.WriteFileOwned(unit, []byte(text), 0o644, 0, 0); err != nil {
		return err
	}
	return symlink(etc, secretsLink, "/etc/"+unit)
}

// writeFile writes one declared file, making its directories (root's,
// 0755) where they are missing.
func writeFile(etc, vars *safedir.Dir, acc accounts, f config.File) error {
	tree, rel := f.Tree()
	d := etc
	if tree == "var" {
		d = vars
	}
	data, err := f.Load()
	if err != nil {
		return err
	}
	uid, gid, err := acc.ids(f.Owner, f.Group)
	if err != nil {
		return err
	}
	if dir := path.Dir(rel); dir != "." {
		sub, err := d.MkdirAll(dir, 0o755)
		if err != nil {
			return err
		}
		sub.Close()
	}
	return d.WriteFileOwned(rel, data, f.Mode, uid, gid)
}

// accounts are the VM's users and groups, by name, from its own
// /etc/passwd and /etc/group: the guest may change them, and owns only
// what it names there.
type accounts struct{ users, groups map[string]int }

func readAccounts(etc *safedir.Dir) (accounts, error) {
	a := accounts{users: map[string]int{}, groups: map[string]int{}}
	for _, f := range []struct {
		name string
		into map[string]int
	}{{"passwd", a.users}, {"group", a.groups}} {
		b, err := etc.ReadFile(f.name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return a, err
		}
		s := bufio.NewScanner(bytes.NewReader(b))
		for s.Scan() {
			fields := strings.Split(s.Text(), ":")
			if len(fields) < 3 {
				continue
			}
			if id, err := strconv.Atoi(fields[2]); err == nil && id >= 0 {
				f.into[fields[0]] = id
			}
		}
	}
	return a, nil
}

// ids resolves a file's owner and group: numbers as they are, names from
// the VM's accounts.
func (a accounts) ids(owner, group string) (uid, gid int, err error) {
	lookup := func(name string, m map[string]int, what string) (int, error) {
		if n, err := strconv.Atoi(name); err == nil {
			return n, nil
		}
		if id, ok := m[name]; ok {
			return id, nil
		}
		return 0, fmt.Errorf("the VM has no %s %q in its /etc/%s (install the package that makes it, in its image)", what, name, map[string]string{"user": "passwd", "group": "group"}[what])
	}
	if uid, err = lookup(owner, a.users, "user"); err != nil {
		return 0, 0, err
	}
	gid, err = lookup(group, a.groups, "group")
	return uid, gid, err
}

// unitDirs are where an image keeps its units, in systemd's order.
var unitDirs = []string{"etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"}

// install is the [Install] section of a unit file.
type install struct {
	wantedBy, requiredBy, also, alias []string
}

// findUnit returns where the image has the unit name, as the guest sees
// it (/lib/systemd/system/nginx.service), and its [Install] section. The
// image is its root, or its layers, uppermost first (image.Lowers).
func findUnit(roots []string, name string) (string, install, error) {
	for _, r := range roots {
		root, err := os.OpenRoot(r)
		if err != nil {
			return "", install{}, err
		}
		for _, dir := range unitDirs {
			if b, err := root.ReadFile(dir + "/" + name); err == nil {
				root.Close()
				return "/" + dir + "/" + name, parseInstall(b), nil
			}
		}
		root.Close()
	}
	return "", install{}, fmt.Errorf("unit %s is not in the VM's image (%s); install its package in the image ([image.NAME] packages), or fix the name", name, strings.Join(unitDirs, ", "))
}

// parseInstall reads the [Install] section of a unit file.
func parseInstall(b []byte) install {
	var in install
	section := ""
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Install]":
			k, v, _ := strings.Cut(line, "=")
			words := strings.Fields(v)
			switch strings.TrimSpace(k) {
			case "WantedBy":
				in.wantedBy = append(in.wantedBy, words...)
			case "RequiredBy":
				in.requiredBy = append(in.requiredBy, words...)
			case "Also":
				in.also = append(in.also, words...)
			case "Alias":
				in.alias = append(in.alias, words...)
			}
		}
	}
	return in
}

// UnitsMissing returns an error for each unit of services and
// disable_services that the image lacks; layers are its root, or its
// layers uppermost first (image.Lowers).
func UnitsMissing(vm *config.VM, layers []string) []error {
	var errs []error
	for _, u := range append(append([]string{}, vm.Services...), vm.DisableServices...) {
		if _, _, err := findUnit(layers, u); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", vm.Name, err))
		}
	}
	return errs
}

// enableUnits makes the symlinks systemctl enable makes for each unit of
// enable (and the units their Also= names), and removes those of disable,
// in the VM's /etc/systemd/system.
func enableUnits(etc *safedir.Dir, imageRoot string, enable, disable []string) error {
	done := map[string]bool{}
	var on func(name string) error
	on = func(name string) error {
		if done[name] {
			return nil
		}
		done[name] = true
		where, in, err := findUnit([]string{imageRoot}, name)
		if err != nil {
			return err
		}
		links := map[string]string{}
		for _, t := range in.wantedBy {
			links["systemd/system/"+t+".wants/"+name] = where
		}
		for _, t := range in.requiredBy {
			links["systemd/system/"+t+".requires/"+name] = where
		}
		for _, a := range in.alias {
			links["systemd/system/"+a] = where
		}
		for link, target := range links {
			if err := symlink(etc, link, target); err != nil {
				return fmt.Errorf("enabling %s: %w", name, err)
			}
		}
		for _, a := range in.also {
			if err := on(a); err != nil {
				return err
			}
		}
		return nil
	}
	for _, u := range enable {
		if err := on(u); err != nil {
			return err
		}
	}
	for _, u := range disable {
		if err := disableUnit(etc, u); err != nil {
			return fmt.Errorf("disabling %s: %w", u, err)
		}
	}
	return nil
}

// symlink makes link (under etc) a symlink to target, root's, with its
// directory.
func symlink(etc *safedir.Dir, link, target string) error {
	dir, err := etc.MkdirAll(path.Dir(link), 0o755)
	if err != nil {
		return err
	}
	dir.Close()
	return etc.Symlink(target, link, 0, 0)
}

// disableUnit removes every symlink called name in the .wants and
// .requires directories of the VM's /etc/systemd/system, as systemctl
// disable does.
func disableUnit(etc *safedir.Dir, name string) error {
	sys, err := etc.OpenDir("systemd/system")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer sys.Close()
	dirs, err := sys.Names()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !strings.HasSuffix(d, ".wants") && !strings.HasSuffix(d, ".requires") {
			continue
		}
		link := d + "/" + name
		if _, err := sys.Readlink(link); err == nil {
			if err := sys.Remove(link); err != nil {
				return err
			}
		}
	}
	return nil
}

// The run_once commands: a script and a oneshot unit in the VM's
// /etc/microvm, enabled in multi-user.target, that runs once per version
// of the list (a stamp named by its hash in /var/lib/microvm).
const (
	runOnceScript = "microvm/run-once.sh"
	runOnceUnit   = "microvm-run-once.service"
	runOnceLink   = "systemd/system/multi-user.target.wants/" + runOnceUnit
)

// RunOnceHash names one version of a run_once list.
func RunOnceHash(cmds []string) string {
	h := sha256.New()
	for _, c := range cmds {
		fmt.Fprintf(h, "%q\n", c)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func writeRunOnce(etc *safedir.Dir, vm *config.VM) error {
	unit := "systemd/system/" + runOnceUnit
	if len(vm.RunOnce) == 0 {
		for _, f := range []string{runOnceLink, unit, runOnceScript} {
			if err := etc.Remove(f); err != nil {
				return err
			}
		}
		return nil
	}
	var script strings.Builder
	script.WriteString("#!/bin/sh\n# Written by microvm from run_once in infra.toml: run once, at the first boot with this list.\nset -e\n")
	for _, c := range vm.RunOnce {
		script.WriteString(c + "\n")
	}
	stamp := "/var/lib/microvm/run-once-" + RunOnceHash(vm.RunOnce) + ".done"
	after := "network-online.target"
	if len(vm.Services) > 0 {
		after += " " + strings.Join(vm.Services, " ")
	}
	text := fmt.Sprintf(`# Written by microvm from run_once in infra.toml; rewritten at every start.
[Unit]
Description=run_once commands of infra.toml
Wants=network-online.target
After=%s
ConditionPathExists=!%s

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -e /etc/%s
ExecStartPost=/bin/sh -c 'mkdir -p /var/lib/microvm && touch %s'

[Install]
WantedBy=multi-user.target
`, after, stamp, runOnceScript, stamp)
	dir, err := etc.MkdirAll(path.Dir(runOnceScript), 0o755)
	if err != nil {
		return err
	}
	dir.Close()
	if err := etc.WriteFileOwned(runOnceScript, []byte(script.String()), 0o700, 0, 0); err != nil {
		return err
	}
	if dir, err = etc.MkdirAll("systemd/system", 0o755); err != nil {
		return err
	}
	dir.Close()
	if err := etc.WriteFileOwned(unit, []byte(text), 0o644, 0, 0); err != nil {
		return err
	}
	return symlink(etc, runOnceLink, "/etc/"+unit)
}

// A VM's volumes are mounted by its init; a unit grows each one's
// filesystem to its device at every boot (resize2fs, online; nothing to
// do when it has not grown): the host grows the file, never the
// filesystem, which the guest wrote.
const (
	volumesUnit = "microvm-volumes.service"
	volumesLink = "systemd/system/local-fs.target.wants/" + volumesUnit
)

func writeVolumesUnit(etc *safedir.Dir, vols []config.Volume) error {
	unit := "systemd/system/" + volumesUnit
	if len(vols) == 0 {
		for _, f := range []string{volumesLink, unit} {
			if err := etc.Remove(f); err != nil {
				return err
			}
		}
		return nil
	}
	var b strings.Builder
	b.WriteString(`# Written by microvm: each volume's filesystem fills its device, which grows with its size in infra.toml.
[Unit]
Description=grow the filesystems of the VM's volumes
DefaultDependencies=no
After=local-fs-pre.target
Before=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
`)
	for _, v := range vols {
		fmt.Fprintf(&b, "ExecStart=/bin/sh -c 'resize2fs \"$(findmnt -no SOURCE %s)\"'\n", v.Mount)
	}
	b.WriteString("\n[Install]\nWantedBy=local-fs.target\n")
	dir, err := etc.MkdirAll("systemd/system", 0o755)
	if err != nil {
		return err
	}
	dir.Close()
	if err := etc.WriteFileOwned(unit, []byte(b.String()), 0o644, 0, 0); err != nil {
		return err
	}
	return symlink(etc, volumesLink, "/etc/"+unit)
}
