package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
)

const seedDiskLimit = 10 << 30 // the design's "< 10 GB for 4 VMs" (taken as GiB, the stricter reading is 10^10 B)

// du returns the bytes allocated under path (du -sB1, as storage's dir
// backend counts).
func du(path string) int64 {
	out, err := exec.Command("du", "-sB1", path).Output()
	if err != nil {
		return 0
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n
}

// diskRun is what one backend measured.
type diskRun struct {
	backend                string
	load                   string
	img, vms, tot, derived table
	total, image, own      int64 // bytes: all of state_dir, the image, the 4 VMs' etc + var
}

// runDisk boots the design's 4 VMs with the dir backend, then with the zfs
// backend, and measures disk use of each.
func runDisk(args []string) error {
	var runs []diskRun
	var m machine
	for _, backend := range []string{"dir", "zfs"} {
		r, mm, err := measureDisk(backend)
		if err != nil {
			return fmt.Errorf("%s backend: %w", backend, err)
		}
		runs = append(runs, r)
		if m.Started.IsZero() {
			m = mm // bytes do not depend on load: the first run's machine is the machine
		}
	}

	var b strings.Builder
	b.WriteString("## Disk\n\n")
	b.WriteString("Command: `go run ./bench disk` (as root, from the repository's root, with ZFS answering: `test/zfs-fuse.sh start`; `make bench` runs all nine).\n\n")
	b.WriteString(m.markdown())
	b.WriteString(`
The seed's 4 VMs, booted together from fresh VM state (each VM's /etc and /var are seeded from the image at its first
start), measured once every VM answers SSH, and again after a clean stop; once with each storage backend. Bytes are
blocks allocated, as storage.For(host).Usage(in) reports them: ` + "`du -B1`" + ` for ` + "`dir`" + `, ZFS's ` + "`used`" + `
(after compression, ` + "`compression=on`" + `) for ` + "`zfs`" + `, where the image is imported into a dataset of its own,
as ` + "`microvm image import`" + ` makes it. ZFS here is zfs-fuse, the user-space ZFS of the Debian package, with a pool in a
sparse file; kernel OpenZFS uses the same on-disk format and compression. The image is the Debian 12 test image
(debootstrap minbase with systemd, OpenSSH and the cloud kernel), shared read-only by all 4 VMs over virtiofs.

An image declared in infra.toml from that one ([image.NAME], from = "debian") shares it: with ` + "`dir`" + ` it is an
overlay layer of what its packages add, with ` + "`zfs`" + ` a clone of the base's snapshot. Each table measures two such
images, built by the program (apt-get in a chroot) before the VMs boot: one that adds Debian's small ` + "`hello`" + `
package, and the two-tier example's web image (nginx-light, fcgiwrap, redis-tools). "Its own use" is what
` + "`microvm image list`" + ` shows: the layer's blocks without the kernel it hard-links from its base, or the clone's
` + "`used`" + `; "the packages" is what dpkg says they install (Installed-Size, including dependencies the base lacked).
`)
	for _, r := range runs {
		fmt.Fprintf(&b, "\n### Storage %q (load average at its start %s)\n\n", r.backend, r.load)
		b.WriteString(r.img.markdown() + "\n" + r.derived.markdown() + "\n" + r.vms.markdown() + "\n" + r.tot.markdown())
	}
	b.WriteString("\nSummary:\n\n")
	for _, r := range runs {
		unshared := 4*r.image + r.own
		fmt.Fprintf(&b, "- `%s`: %s for the 4-VM setup, %.1f %% of the seed's 10 GB (%.0f× under it); "+
			"sharing the image saves %s against 4 private copies.\n",
			r.backend, mib(r.total), 100*float64(r.total)/seedDiskLimit, float64(seedDiskLimit)/float64(r.total), mib(unshared-(r.image+r.own)))
	}
	if len(runs) == 2 && runs[0].total > 0 {
		fmt.Fprintf(&b, "- `zfs` against `dir`: %.2f× the bytes (compression).\n", float64(runs[1].total)/float64(runs[0].total))
	}
	return writeSection("disk", b.String())
}

// measureDisk boots the 4 VMs with storage backend and measures.
func measureDisk(backend string) (diskRun, machine, error) {
	r := diskRun{backend: backend}
	w, err := setupVMs(backend, 4, config.DefaultImage)
	if err != nil {
		return r, machine{}, err
	}
	defer w.close()
	r.load = w.m.Load
	fmt.Printf("disk: 4 VMs, storage %s, accel %s; load average at start %s\n", w.in.Host.Storage, w.accel, w.m.Load)
	img := w.in.Host.ImageDir(config.DefaultImage)
	r.img = table{head: []string{"image part", "on disk"}}
	for _, part := range []string{"rootfs", "vmlinuz", "vmlinux"} {
		r.img.add(part, mib(du(filepath.Join(img, part))))
	}
	r.img.add("**image total**", mib(du(img)))
	if r.derived, err = measureDerived(w); err != nil {
		return r, w.m, err
	}

	_, vms, clients, err := w.bootMicrovm("microvm")
	if err != nil {
		w.stopMicrovm(nil, vms, clients)
		return r, w.m, err
	}
	for _, c := range clients {
		c.Close()
	}
	// ZFS counts a write once its transaction group is committed (up to
	// 30 s with zfs-fuse); a snapshot commits at once, so take and drop one.
	commitWrites := func() {
		exec.Command("sync").Run()
		if backend == "zfs" {
			snap := w.in.Host.ZFSDataset + "@bench-sync"
			exec.Command("zfs", "snapshot", "-r", snap).Run()
			exec.Command("zfs", "destroy", "-r", snap).Run()
		}
	}
	commitWrites()
	booted, err := storage.For(w.in.Host).Usage(w.in)
	if err != nil {
		w.stopMicrovm(nil, vms, nil)
		return r, w.m, err
	}
	type split struct{ etc, var_ int64 }
	parts := map[string]split{}
	for _, vm := range w.in.VMs {
		parts[vm.Name] = split{du(vm.EtcDir), du(vm.VarDir)}
	}
	w.stopMicrovm(nil, vms, nil)
	commitWrites()
	stopped, err := storage.For(w.in.Host).Usage(w.in)
	if err != nil {
		return r, w.m, err
	}

	r.vms = table{head: []string{"VM", "/etc (du)", "/var (du)", "own use after boot (storage.Usage)", "after a clean stop"}}
	for _, vm := range w.in.VMs {
		p := parts[vm.Name]
		r.vms.add(vm.Name, mib(p.etc), mib(p.var_), mib(booted.VMs[vm.Name]), mib(stopped.VMs[vm.Name]))
		r.own += booted.VMs[vm.Name]
	}
	r.image, r.total = booted.Images, booted.Total
	r.tot = table{head: []string{"", "bytes on disk", "of the seed's 10 GB"}}
	pct := func(n int64) string { return fmt.Sprintf("%.1f %%", 100*float64(n)/seedDiskLimit) }
	r.tot.add("shared image (once)", mib(booted.Images), pct(booted.Images))
	r.tot.add("the 4 VMs' own etc + var", mib(r.own), pct(r.own))
	r.tot.add("**total for the 4-VM setup** (all of state_dir)", mib(booted.Total), pct(booted.Total))
	unshared := 4*booted.Images + r.own
	r.tot.add("for comparison: 4 full copies of the image + etc + var (computed, no sharing)", mib(unshared), pct(unshared))

	fmt.Println()
	for _, t := range []table{r.img, r.vms, r.tot} {
		t.print(os.Stdout)
		fmt.Println()
	}
	return r, w.m, nil
}

// measureDerived builds two images from the base on w's host, as
// [image.NAME] tables make them, and measures what each takes beyond it.
func measureDerived(w *vmWorld) (table, error) {
	t := table{head: []string{"derived image", "its own use", "the packages (dpkg)", "a full copy of the base would be"}}
	in := *w.in
	in.Images = []config.Image{
		{Name: "bench-hello", From: config.DefaultImage, Packages: []string{"hello"}},
		{Name: "bench-web", From: config.DefaultImage, Packages: []string{"nginx-light", "fcgiwrap", "redis-tools"}},
	}
	base, err := storage.For(in.Host).ImageSize(config.DefaultImage)
	if err != nil {
		return t, err
	}
	for _, img := range in.Images {
		if err := image.BuildDeclared(context.Background(), &in, img.Name, io.Discard, image.Options{Boot: image.BootFiles}); err != nil {
			return t, fmt.Errorf("building %s: %w", img.Name, err)
		}
		r, err := image.Resolve(&in, img.Name)
		if err != nil {
			return t, err
		}
		infos, err := image.List(in.Host)
		if err != nil {
			return t, err
		}
		var own int64
		for _, i := range infos {
			if i.Name == r.Dir {
				own = i.Size
			}
		}
		pkgs, err := installedSize(&in, r.Dir)
		if err != nil {
			return t, err
		}
		t.add(img.Summary(), mib(own), mib(pkgs), mib(base))
		if err := image.Remove(in.Host, r.Dir, nil); err != nil {
			return t, err
		}
	}
	return t, nil
}

// installedSize is what dpkg says the packages of the image in dir, and
// those they pulled in, install: the sum of Installed-Size of every package
// the image has and its base lacks.
func installedSize(in *config.Infra, dir string) (int64, error) {
	sizes := func(root string) (map[string]int64, error) {
		out, err := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${Package} ${Installed-Size}\n").Output()
		if err != nil {
			return nil, fmt.Errorf("dpkg-query in %s: %w", root, err)
		}
		m := map[string]int64{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				m[f[0]] = n * 1024
			}
		}
		return m, nil
	}
	view := filepath.Join(in.Host.RunDir, "bench-view")
	lowers, err := image.Lowers(in.Host, dir)
	if err != nil {
		return 0, err
	}
	var mount interface{ Apply() error } = &virtiofs.ReadOnlyView{Src: lowers[0], Dst: view}
	if len(lowers) > 1 {
		mount = &virtiofs.OverlayView{Lowers: lowers, Dst: view}
	}
	if err := mount.Apply(); err != nil {
		return 0, err
	}
	defer exec.Command("umount", view).Run()
	now, err := sizes(view)
	if err != nil {
		return 0, err
	}
	was, err := sizes(in.Host.ImageRootfs(config.DefaultImage))
	if err != nil {
		return 0, err
	}
	var total int64
	for p, n := range now {
		if _, ok := was[p]; !ok {
			total += n
		}
	}
	return total, nil
}
