// Command guestinit is the image's /sbin/init in the boot test of
// microvm-init: what microvm-init hands over to. It reports what the guest
// looks like from the inside, one "GUEST key=value" line each, then
// "GUEST done", and powers the VM off.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	report("pid", fmt.Sprint(os.Getpid()))
	host, err := os.Hostname()
	report("hostname", orErr(host, err))
	report("eth0", eth0Addrs())
	report("default-route", defaultRoute())
	report("eth0-ipv6", eth0Addrs6())
	report("default-route-ipv6", defaultRoute6())
	for _, key := range []string{"accept_ra", "autoconf"} {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/" + key)
		report("ipv6-"+key, orErr(strings.TrimSpace(string(b)), err))
	}
	for _, dir := range []string{"/", "/etc", "/var", "/dev", "/proc", "/sys"} {
		report("mount:"+dir, mountOf(dir))
	}
	// The initramfs's files are gone and / is the image.
	report("init-file", errName(exists("/init")))

	// / is the shared image: read-only in the guest's mount, and again on
	// the host (a read-only bind mount) once the guest remounts it rw.
	report("write:/", errName(os.WriteFile("/written-by-guest", []byte("x\n"), 0o644)))
	report("remount-rw:/", errName(unix.Mount("", "/", "", unix.MS_REMOUNT, "")))
	report("mount-after-remount:/", mountOf("/"))
	report("write-after-remount:/", errName(os.WriteFile("/written-by-guest", []byte("x\n"), 0o644)))
	report("mkdir-after-remount:/", errName(os.Mkdir("/made-by-guest", 0o755)))

	// /etc and /var are the VM's own, on the host.
	report("write:/etc", errName(os.WriteFile("/etc/written-by-guest", []byte(host+"\n"), 0o644)))
	report("write:/var", errName(os.WriteFile("/var/written-by-guest", []byte(host+"\n"), 0o644)))
	resolv, err := os.ReadFile("/etc/resolv.conf")
	report("resolv.conf", orErr(strings.Join(nonComments(string(resolv)), ";"), err))

	report("done", "")
	unix.Sync()
	// The console is a tty: let it send the lines above before power off.
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func report(key, value string) { fmt.Printf("GUEST %s=%s\n", key, value) }

func orErr(s string, err error) string {
	if err != nil {
		return "error:" + err.Error()
	}
	return s
}

// errName is "ok" for nil and the errno's name (EROFS) for a system error.
func errName(err error) string {
	var errno unix.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func exists(path string) error {
	_, err := os.Lstat(path)
	return err
}

func eth0Addrs() string {
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return "error:" + err.Error()
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return "error:" + err.Error()
	}
	var s []string
	for _, a := range addrs {
		s = append(s, a.IPNet.String())
	}
	up := "down"
	if link.Attrs().Flags&net.FlagUp != 0 {
		up = "up"
	}
	return strings.Join(s, ",") + " " + up
}

func defaultRoute() string {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "error:" + err.Error()
	}
	for _, r := range routes {
		if r.Dst != nil { // netlink gives the default route as 0.0.0.0/0
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		name := "?"
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		return fmt.Sprintf("via %s dev %s", r.Gw, name)
	}
	return "none"
}

// mountOf returns "FSTYPE SOURCE OPTIONS" of the mount on dir, from
// /proc/self/mountinfo; the last one wins, as it hides those below.
func mountOf(dir string) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "error:" + err.Error()
	}
	defer f.Close()
	found := "none"
	s := bufio.NewScanner(f)
	for s.Scan() {
		// 22 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=...
		pre, post, _ := strings.Cut(s.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 6 || len(b) < 2 || a[4] != dir {
			continue
		}
		found = fmt.Sprintf("%s %s %s", b[0], b[1], strings.Split(a[5], ",")[0])
	}
	return found
}

func nonComments(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// eth0Addrs6 lists eth0's IPv6 addresses, sorted, each "tentative" while
// duplicate address detection holds it back. The kernel makes the
// link-local one once it sees the link operational, which it says up to
// a second after the carrier (linkwatch): wait for it a while.
func eth0Addrs6() string {
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return "error:" + err.Error()
	}
	var s []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return "error:" + err.Error()
		}
		s = nil
		linkLocal := false
		for _, a := range addrs {
			w := a.IPNet.String()
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				w += " tentative"
			}
			s = append(s, w)
			linkLocal = linkLocal || a.IP.IsLinkLocalUnicast()
		}
		if linkLocal || time.Now().After(deadline) {
			break
		}
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

func defaultRoute6() string {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V6)
	if err != nil {
		return "error:" + err.Error()
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		name := "?"
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		return fmt.Sprintf("via %s dev %s", r.Gw, name)
	}
	return "none"
}
