package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestWorkloads derives what runs in each VM from a two-tier file: its
// images, services, files, openings and published ports.
func TestWorkloads(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "files"), 0o755)
	os.WriteFile(filepath.Join(dir, "files", "site.conf"), []byte("server { listen 80; }\n"), 0o644)
	file := filepath.Join(dir, "infra.toml")
	in, err := Parse(file, []byte(`
[host]
uplink = "eth0"

[image.web]
from = "base"
packages = ["nginx-light", "fcgiwrap"]
run = ["systemctl enable fcgiwrap.socket"]

[image.base]
packages = ["curl"]
[image.base.files]
"/usr/local/bin/hello" = { content = "#!/bin/sh\necho hello\n", mode = "0755" }

[vm.web]
subnet = "10.1.0.0/24"
image = "web"
services = ["nginx", "fcgiwrap.socket"]
disable_services = ["exim4"]
run_once = ["echo first boot"]
allow = ["vm:db tcp 6379", "192.168.1.20"]
publish = ["tcp 80", "tcp 8443:443 from 198.51.100.0/24,203.0.113.7"]
image_writable = true

[vm.web.files]
"/etc/nginx/sites-enabled/default" = { source = "files/site.conf" }
"/srv/www/index.html" = { content = "<h1>hi</h1>\n", mode = "0640", owner = "www-data" }
"/root/.profile" = { content = "PS1='web# '\n", owner = "0:0" }

[vm.db]
subnet = "10.2.0.0/24"
`))
	if err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")
	db, _ := in.VM("db")

	if got, want := web.Services, []string{"nginx.service", "fcgiwrap.socket"}; !slices.Equal(got, want) {
		t.Errorf("services = %q, want %q", got, want)
	}
	if got, want := web.DisableServices, []string{"exim4.service"}; !slices.Equal(got, want) {
		t.Errorf("disable_services = %q, want %q", got, want)
	}
	if !web.ImageWritable || db.ImageWritable {
		t.Errorf("image_writable: web %v, db %v; want true, false", web.ImageWritable, db.ImageWritable)
	}

	files := map[string]File{}
	for _, f := range web.Files {
		files[f.Path] = f
	}
	for _, c := range []struct {
		path, tree, rel, owner, group string
		mode                          uint32
	}{
		{"/etc/nginx/sites-enabled/default", "etc", "nginx/sites-enabled/default", "root", "root", 0o644},
		{"/srv/www/index.html", "var", "srv/www/index.html", "www-data", "www-data", 0o640},
		{"/root/.profile", "var", "root/.profile", "0", "0", 0o644},
	} {
		f, ok := files[c.path]
		if !ok {
			t.Errorf("no file %s", c.path)
			continue
		}
		tree, rel := f.Tree()
		if tree != c.tree || rel != c.rel || f.Owner != c.owner || f.Group != c.group || uint32(f.Mode) != c.mode {
			t.Errorf("%s: got tree %s rel %s owner %s:%s mode %o, want %s %s %s:%s %o", c.path, tree, rel, f.Owner, f.Group, f.Mode, c.tree, c.rel, c.owner, c.group, c.mode)
		}
	}
	site := files["/etc/nginx/sites-enabled/default"]
	if got, want := site.Source, filepath.Join(dir, "files", "site.conf"); got != want {
		t.Errorf("source = %s, want %s (relative to infra.toml)", got, want)
	}
	if b, err := site.Load(); err != nil || string(b) != "server { listen 80; }\n" || site.Sum != sum(b) {
		t.Errorf("Load = %q, %v; sum %s", b, err, site.Sum)
	}

	if got, want := web.Allow[0].Net.String(), db.Addr.String()+"/32"; got != want || web.Allow[0].VM != "db" {
		t.Errorf("vm:db resolves to %s (VM %q), want %s", got, web.Allow[0].VM, want)
	}
	if got, want := web.Allow[0].String(), "vm:db tcp 6379"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	var pubs []string
	for _, p := range web.Publish {
		pubs = append(pubs, p.String())
	}
	if got, want := strings.Join(pubs, "; "), "tcp 80; tcp 8443:443 from 198.51.100.0/24,203.0.113.7"; got != want {
		t.Errorf("publish = %q, want %q", got, want)
	}

	if got, want := len(in.Images), 2; got != want {
		t.Fatalf("%d images, want %d", got, want)
	}
	var chain []string
	for _, img := range in.Chain("web") {
		chain = append(chain, img.Name+"<-"+img.From)
	}
	if got, want := strings.Join(chain, " "), "web<-base base<-debian"; got != want {
		t.Errorf("Chain(web) = %q, want %q", got, want)
	}
	webImg, _ := in.Image("web")
	if got, want := webImg.Summary(), "base + nginx-light fcgiwrap, 1 command"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	base, _ := in.Image("base")
	before := base.Definition()
	if !strings.Contains(before, `file "/usr/local/bin/hello" -rwxr-xr-x root:root `) {
		t.Errorf("Definition lacks the file with its mode and owner:\n%s", before)
	}
}
