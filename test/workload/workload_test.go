// Package workload proves the README's "Run your own services" with real
// services in real guests: the two-tier example (examples/two-tier), its
// images built from Debian's packages, booted under QEMU in a sandbox of
// network namespaces. web serves a page through nginx that it fills from
// db, a Redis server; the page answers from the host and, through the
// published port, from the "internet"; web reaches db's port and nothing
// else of db; no other VM reaches db; a changed file restarts exactly the
// VM it belongs to; db's data survives its restart; a changed image
// restarts exactly the VMs that boot it, and its old version goes once
// none does.
package workload

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/image/imagetest"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/sandbox/sandboxtest"
	"github.com/simple-microvm-infra/microvm/internal/storage"
	"github.com/simple-microvm-infra/microvm/internal/supervise"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
	"golang.org/x/sys/unix"
)

// readmeSteps are the commands of the README's "Run your own services",
// in order. The test runs each as printed (with /etc/microvm standing for
// its own directory), and fails when the README changes without it.
var readmeSteps = []string{
	"cp -r examples/two-tier/files examples/two-tier/secrets /etc/microvm/",
	`sed -n '/^\[image.web\]/,$p' examples/two-tier/infra.toml >> /etc/microvm/infra.toml`,
	"microvm secret keygen",
	"microvm secret encrypt /etc/microvm/secrets/db.yaml",
	"microvm validate",
	"microvm plan",
	"microvm apply",
	"microvm status",
	"curl http://10.5.0.2/",
	"microvm ssh web -- 'REDISCLI_AUTH=$(cat /run/credentials/microvm/redis-password) redis-cli --no-auth-warning -h 10.6.0.2 get greeting'",
	"microvm ssh vm1 -- nc -zw3 10.6.0.2 6379 || echo blocked",
	"sed -i 's/db says/db now says/' /etc/microvm/files/web/page.sh",
	"microvm -u web db",
}

// Where readmeSteps are: the test runs them by these indices.
const (
	stepCopy = iota
	stepAppend
	stepKeygen
	stepEncrypt
	stepValidate
	stepPlan
	stepApply
	stepStatus
	stepCurl
	stepGreeting
	stepBlocked
	stepEdit
	stepUpdate
)

// theirFile is the tutorial's infra.toml as a reader has it after step 3,
// for this machine: QEMU under TCG, a state directory of the test's own
// with the cached Debian image in it, and of the design's VMs only vm1
// starts.
func theirFile(t *testing.T, dir string) string {
	t.Helper()
	// The VMMs run as their VMs' users and open the kernel under
	// state_dir: the test's directories (mode 0700) must let them through.
	for d := dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	host := imagetest.Private(t, filepath.Join(dir, "state"))
	src, err := os.ReadFile("../../examples/infra.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(src), "[host]\n", fmt.Sprintf("[host]\nstate_dir = %q\nrun_dir = %q\naccel = \"tcg\"\n", host.StateDir, testenv.RunDir(t, "mvw")), 1)
	s = strings.Replace(s, `state_dir = "/var/lib/microvms"`, "", 1)
	s = strings.Replace(s, `hypervisor = "cloud-hypervisor"`, `hypervisor = "qemu"`, 1)
	s = strings.Replace(s, "vcpu = 2", "vcpu = 1", 1)
	s = strings.Replace(s, "memory = 1024", "memory = 512", 1)
	for _, vm := range []string{"vm2", "vm3", "vm4"} {
		s = strings.Replace(s, "[vm."+vm+"]", "[vm."+vm+"]\nautostart = false", 1)
	}
	// vm1 writes to its image: the test's own use of image_writable.
	s = strings.Replace(s, "[vm.vm1]", "[vm.vm1]\nimage_writable = true", 1)
	file := filepath.Join(dir, "infra.toml")
	if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestTwoTier(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "ip", "nft", "qemu-system-x86_64", "go", "curl", "sed", "cp")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if got := testenv.ReadmeCommands(string(readme), "## Run your own services"); !slices.Equal(got, readmeSteps) {
		t.Fatalf("the README's \"Run your own services\" has the commands\n%s\nthe test runs\n%s\nmake them agree", strings.Join(got, "\n"), strings.Join(readmeSteps, "\n"))
	}
	dir := t.TempDir()
	file := theirFile(t, dir)
	bin := testenv.Binaries(t)
	repo, _ := filepath.Abs("../..")
	// The host's age key is the test's, and so is db's password: a token
	// looked for later everywhere on the host it must not be.
	ageKey := filepath.Join(dir, "age.key")
	t.Setenv("SOPS_AGE_KEY_FILE", ageKey)
	password := "pw-" + hex.EncodeToString([]byte(time.Now().Format(time.RFC3339Nano)))[:24]
	var ns string // the sandbox's host, once there is one
	// step runs the README's command i as a reader would, from the
	// repository, in the sandbox's host once there is one.
	step := func(t *testing.T, i int) string {
		t.Helper()
		line := strings.ReplaceAll(readmeSteps[i], "/etc/microvm", dir)
		cmd := exec.Command("sh", "-c", line)
		if ns != "" {
			cmd = sandbox.Command(ns, "sh", "-c", line)
		}
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "MICROVM_CONFIG="+file, "SOPS_AGE_KEY_FILE="+ageKey)
		var stderr strings.Builder
		cmd.Stderr = &stderr // curl's progress, say
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s%s", readmeSteps[i], err, out, stderr.String())
		}
		t.Logf("$ %s\n%s", readmeSteps[i], out)
		return string(out)
	}
	step(t, stepCopy)
	step(t, stepAppend)
	// The reader sets a password of their own, as the file says.
	secrets := filepath.Join(dir, "secrets", "db.yaml")
	plain, _ := os.ReadFile(secrets)
	os.WriteFile(secrets, []byte(strings.ReplaceAll(string(plain), "change-me-please", password)), 0o600)
	if recipient := strings.TrimSpace(step(t, stepKeygen)); !strings.HasPrefix(recipient, "age1") {
		t.Fatalf("secret keygen printed %q, want an age recipient", recipient)
	}
	step(t, stepEncrypt)
	if b, _ := os.ReadFile(secrets); bytes.Contains(b, []byte(password)) {
		t.Fatalf("secrets/db.yaml still holds the password in clear after secret encrypt")
	}
	step(t, stepValidate)
	in, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range in.VMs {
		storage.RemoveState(vm.StateDir) // every run starts from fresh VMs; the images are shared
	}
	// apply builds the images, but in the sandbox it has no Debian mirror
	// to reach: they are built here first, outside it, once per run (the
	// build is the same code; internal/cli's tests watch apply build one).
	imagetest.Declared(t, in)
	sb, err := sandbox.New(in)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	ns = sb.Host
	mvm := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := sandbox.Command(sb.Host, bin, append(args, "-f", file)...).CombinedOutput()
		if err != nil {
			t.Fatalf("microvm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// run runs a part of the test and remembers it if it fails: the VMs'
	// logs below are long, and a failed test's output ends by naming it.
	var failed []string
	run := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			failed = append(failed, strconv.Quote(name))
		}
	}
	defer func() {
		for i := range in.VMs {
			supervise.StopDetached(&in.VMs[i], 90*time.Second)
		}
		if t.Failed() {
			for _, vm := range in.VMs {
				sup, _ := os.ReadFile(vm.SupervisorLog())
				t.Logf("%s supervisor log:\n%s\n%s console (end):\n%s", vm.Name, supervise.Tail(sup, 30), vm.Name, sandbox.Console(&vm, 20))
			}
			if len(failed) > 0 {
				t.Logf("failed: %s (their messages are above the VMs' logs)", strings.Join(failed, ", "))
			}
		}
	}()
	if err := sb.Serve(); err != nil {
		t.Fatal(err)
	}
	web, _ := in.VM("web")
	db, _ := in.VM("db")
	vm1, _ := in.VM("vm1")
	uplink := sandbox.UplinkAddr.Addr().String()

	plan := step(t, stepPlan)
	for _, want := range []string{"microvm up web", "microvm up db", "microvm up vm1", "nft -f microvm.nft"} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q", want)
		}
	}
	began := time.Now()
	step(t, stepApply)
	for _, vm := range []*config.VM{web, db, vm1} {
		sandboxtest.Login(t, sb, vm).Close()
	}
	t.Logf("web, db and vm1 answer SSH %s after apply", time.Since(began).Round(time.Second))
	if out := step(t, stepStatus); !strings.Contains(out, "web") || !strings.Contains(out, "running") {
		t.Errorf("status:\n%s", out)
	}

	// ssh runs a command in a guest as root, with the host's admin key.
	ssh := func(vm, cmd string) (string, error) {
		out, err := sandbox.Command(sb.Host, bin, "ssh", "-f", file, vm, "--", cmd).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// page fetches url from ns. sshd answers before the guest's boot has
	// finished: nginx may take a while more under emulation.
	page := func(t *testing.T, ns, url string) string {
		t.Helper()
		body, err := get(ns, url)
		for deadline := time.Now().Add(2 * time.Minute); err != nil && time.Now().Before(deadline); {
			time.Sleep(time.Second)
			body, err = get(ns, url)
		}
		if err != nil {
			out, _ := ssh("web", "systemctl --no-pager status nginx fcgiwrap.socket; journalctl --no-pager -n 20 -u nginx -u fcgiwrap")
			t.Fatalf("GET %s from %s: %v\nweb's nginx:\n%s", url, ns, err, out)
		}
		return body
	}

	auth := "REDISCLI_AUTH=$(cat /run/credentials/microvm/redis-password) "
	// visits reads the key the test sets in db's Redis, from web. After db
	// restarts, sshd answers before redis-server has loaded its data: it
	// asks for up to two minutes.
	visits := func() (out string, err error) {
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
			if out, err = ssh("web", auth+"redis-cli --no-auth-warning -h "+db.Addr.String()+" get visits"); err == nil && out == "42" {
				break
			}
		}
		return out, err
	}

	run("the page carries db's data", func(t *testing.T) {
		page(t, sb.Host, "http://"+web.Addr.String()+"/") // until nginx is up
		if out := step(t, stepCurl); !strings.Contains(out, "db says: hello from db") {
			t.Errorf("from the host, the page is %q; want db's greeting", out)
		}
		if got := page(t, sb.Internet, "http://"+uplink+"/"); !strings.Contains(got, "db says: hello from db") {
			t.Errorf("from the internet, through the published port, the page is %q; want db's greeting", got)
		}
		if out := step(t, stepGreeting); strings.TrimSpace(out) != "hello from db" {
			t.Errorf("web's redis-cli get greeting = %q", out)
		}
		for vm, units := range map[string]string{"web": "nginx fcgiwrap.socket", "db": "redis-server"} {
			if out, err := ssh(vm, "systemctl is-enabled "+units); err != nil {
				t.Errorf("%s: systemctl is-enabled %s: %s", vm, units, out)
			}
		}
	})

	run("only web reaches db, only on its port", func(t *testing.T) {
		if out := step(t, stepBlocked); strings.TrimSpace(out) != "blocked" {
			t.Errorf("vm1 to db's Redis: %q, want blocked", out)
		}
		for _, c := range []struct {
			from, cmd string
			reach     bool
		}{
			{"web", "nc -z -w 3 " + db.Addr.String() + " 6379", true},
			{"web", "nc -z -w 3 " + db.Addr.String() + " 22", false},
			{"web", "ping -c 1 -W 2 " + db.Addr.String(), false},
			{"vm1", "ping -c 1 -W 2 " + db.Addr.String(), false},
			{"db", "nc -z -w 3 " + web.Addr.String() + " 80", false},
			{"db", "nc -z -w 3 " + vm1.Addr.String() + " 22", false},
		} {
			out, err := ssh(c.from, c.cmd)
			if reached := err == nil; reached != c.reach {
				t.Errorf("from %s, %q: reached %v (%s), want %v", c.from, c.cmd, reached, out, c.reach)
			}
		}
		if body, err := get(sb.Internet, "http://"+uplink+":8080/"); err == nil {
			t.Errorf("an unpublished port of the host reached something from the internet: %q", body)
		}
	})

	run("a changed file restarts only its VM", func(t *testing.T) {
		step(t, stepEdit)
		out := step(t, stepUpdate)
		for _, want := range []string{"web changed: files changed: /var/www/cgi/page", "db is up to date; not restarted"} {
			if !strings.Contains(out, want) {
				t.Errorf("microvm -u web db says\n%s\nwant %q", out, want)
			}
		}
		sandboxtest.Login(t, sb, web).Close()
		if got := page(t, sb.Host, "http://"+web.Addr.String()+"/"); !strings.Contains(got, "db now says: hello from db") {
			t.Errorf("after the update the page is %q", got)
		}
	})

	run("db keeps its data across a restart", func(t *testing.T) {
		if out, err := ssh("web", auth+"redis-cli --no-auth-warning -h "+db.Addr.String()+" set visits 42"); err != nil || out != "OK" {
			t.Fatalf("set: %s, %v", out, err)
		}
		t.Log(mvm(t, "restart", "db"))
		sandboxtest.Login(t, sb, db).Close()
		if out, err := visits(); out != "42" {
			t.Errorf("after db's restart, visits = %q, %v; want 42", out, err)
		}
	})

	run("the password is in the guests' memory, nowhere on the host's disk", func(t *testing.T) {
		for vm, want := range map[string]string{"web": "www-data:400 virtiofs", "db": "root:400 virtiofs"} {
			out, err := ssh(vm, "stat -c '%U:%a' /run/credentials/microvm/redis-password; findmnt -no FSTYPE /run/credentials/microvm; cat /run/credentials/microvm/redis-password")
			if lines := strings.Split(out, "\n"); err != nil || len(lines) != 3 || lines[0]+" "+lines[1] != want || lines[2] != password {
				t.Errorf("%s's secret: %q, %v; want %s and the password", vm, out, err, want)
			}
		}
		// Not in the VMs' trees or volumes, their logs and consoles, the
		// images, any process's command line or environment.
		var places []string
		for _, vm := range []*config.VM{web, db, vm1} {
			places = append(places, vm.StateDir, vm.RunDir)
		}
		places = append(places, in.Host.ImagesDir())
		for _, p := range places {
			if hit := findToken(t, p, password); hit != "" {
				t.Errorf("the password is in %s", hit)
			}
		}
		if hit := inProcesses(password); hit != "" {
			t.Errorf("the password is in %s", hit)
		}
		// No VMM user, db's own or another VM's, reads db's secrets on
		// the host.
		for _, vm := range []*config.VM{db, web} {
			u, _ := user.Lookup(vm.User)
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			err := testenv.AsUser(uint32(uid), uint32(gid), nil, func() error {
				_, err := os.ReadFile(filepath.Join(db.SecretsShare(), "redis-password"))
				return err
			})
			if !errors.Is(err, fs.ErrPermission) {
				t.Errorf("%s reading db's secret: %v; want permission denied", vm.User, err)
			}
		}
	})

	run("db's volume holds Redis' data, and grows", func(t *testing.T) {
		if out, err := ssh("db", "findmnt -no FSTYPE,SOURCE /var/lib/redis; stat -c %U /var/lib/redis"); err != nil || strings.Join(strings.Fields(out), " ") != "ext4 /dev/vda redis" {
			t.Errorf("db's /var/lib/redis: %q, %v; want an ext4 block device, redis's", out, err)
		}
		src, _ := os.ReadFile(file)
		os.WriteFile(file, []byte(strings.Replace(string(src), `data = { size = "1G"`, `data = { size = "2G"`, 1)), 0o644)
		out := mvm(t, "-u", "db")
		if !strings.Contains(out, "volume data") {
			t.Errorf("-u db after the volume grew:\n%s", out)
		}
		sandboxtest.Login(t, sb, db).Close()
		var size int64
		for try := 0; try < 30 && size < 1900<<20; try++ { // the guest's unit grows it as it boots
			out, _ := ssh("db", "df -B1 --output=size /var/lib/redis | tail -n1")
			size, _ = strconv.ParseInt(strings.TrimSpace(out), 10, 64)
			time.Sleep(2 * time.Second)
		}
		if size < 1900<<20 {
			t.Errorf("db's volume holds %d bytes after it grew to 2G", size)
		}
		if out, err := visits(); out != "42" {
			t.Errorf("after the volume grew, visits = %q, %v; want 42", out, err)
		}
	})

	run("vm1 writes to its own image, and only it", func(t *testing.T) {
		if out, err := ssh("vm1", "echo mine > /usr/local/bin/mine && mount | grep ' / '"); err != nil {
			t.Fatalf("writing to vm1's image: %s, %v", out, err)
		}
		if b, err := os.ReadFile(filepath.Join(vm1.ImageUpper(), "usr/local/bin/mine")); err != nil || string(b) != "mine\n" {
			t.Errorf("vm1's upper layer has usr/local/bin/mine = %q, %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(in.Host.ImageRootfs("debian"), "usr/local/bin/mine")); err == nil {
			t.Error("vm1's write reached the shared image")
		}
		if out, err := ssh("web", "cat /usr/local/bin/mine"); err == nil {
			t.Errorf("web sees vm1's file: %q", out)
		}
		t.Log(mvm(t, "restart", "vm1"))
		sandboxtest.Login(t, sb, vm1).Close()
		if out, err := ssh("vm1", "cat /usr/local/bin/mine"); err != nil || out != "mine" {
			t.Errorf("after a restart vm1's file is %q, %v", out, err)
		}
	})

	run("a changed image restarts only the VMs that boot it", func(t *testing.T) {
		old, err := image.Resolve(in, "db")
		if err != nil {
			t.Fatal(err)
		}
		src, _ := os.ReadFile(file)
		changed := strings.Replace(string(src), "[vm.db.files]", "[image.db.files]\n\"/etc/motd\" = { content = \"db image, second version\\n\" }\n\n[vm.db.files]", 1)
		if err := os.WriteFile(file, []byte(changed), 0o644); err != nil {
			t.Fatal(err)
		}
		plan := mvm(t, "plan")
		for _, want := range []string{"microvm image build db", "files changed", "microvm restart db", "image db: debian + redis-server -> debian + redis-server, 1 file"} {
			if !strings.Contains(plan, want) {
				t.Errorf("plan says\n%s\nwant %q", plan, want)
			}
		}
		if strings.Contains(plan, "restart web") || strings.Contains(plan, "restart vm1") {
			t.Errorf("plan restarts a VM whose image did not change:\n%s", plan)
		}
		t.Log(mvm(t, "apply"))
		sandboxtest.Login(t, sb, db).Close()
		if got, _ := ssh("db", "cat /etc/motd"); got != "db image, second version" {
			t.Errorf("db's /etc/motd = %q after the new image", got)
		}
		if old.Built(in.Host) {
			t.Errorf("the old version %s of db is still there after apply; nothing boots it", old.Dir)
		}
		if got := page(t, sb.Host, "http://"+web.Addr.String()+"/"); !strings.Contains(got, "hello from db") {
			t.Errorf("after db's new image the page is %q", got)
		}
		if plan := mvm(t, "plan"); !strings.Contains(plan, "no changes") {
			t.Errorf("plan after apply:\n%s\nwant no changes", plan)
		}
	})
}

// get fetches url from the network namespace ns with curl, and fails on
// anything but a 2xx answer.
func get(ns, url string) (string, error) {
	out, err := sandbox.Command(ns, "curl", "-fsS", "-m", "10", url).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	return string(out), nil
}

// findToken returns the first file under root that holds token (or ""),
// reading every regular file, sparse ones by their data only.
func findToken(t *testing.T, root, token string) string {
	t.Helper()
	var hit string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || hit != "" || !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		if containsSparse(f, []byte(token)) {
			hit = p
		}
		return nil
	})
	return hit
}

// containsSparse reads f's data (skipping the holes of a sparse file, such
// as a volume) and reports whether it holds tok.
func containsSparse(f *os.File, tok []byte) bool {
	fd := int(f.Fd())
	buf := make([]byte, 1<<20)
	var off int64
	for {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			return false
		}
		n, err := f.ReadAt(buf, data)
		if n > 0 && bytes.Contains(buf[:n], tok) {
			return true
		}
		if err != nil {
			return false
		}
		off = data + int64(n) - int64(len(tok)) // a token across two reads
	}
}

// inProcesses returns the first process whose command line or environment
// holds tok (or "").
func inProcesses(tok string) string {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, f := range []string{"cmdline", "environ"} {
			if b, err := os.ReadFile(filepath.Join(p, f)); err == nil && bytes.Contains(b, []byte(tok)) {
				return filepath.Join(p, f)
			}
		}
	}
	return ""
}
