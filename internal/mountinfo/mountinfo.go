// Package mountinfo reads the mount points of this mount namespace from
// /proc/self/mountinfo. stat(2) cannot tell a bind mount of a directory of
// the same filesystem from a plain directory; mountinfo can.
package mountinfo

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Points returns every mount point, in mount order.
func Points() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": the fifth field is the mount point.
		if fields := strings.Fields(s.Text()); len(fields) > 4 {
			points = append(points, Unescape(fields[4]))
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	return points, nil
}

// Under returns the mount points at dir or below it.
func Under(dir string) ([]string, error) {
	all, err := Points()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, p := range all {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out, nil
}

// IsPoint reports whether a mount is on path exactly.
func IsPoint(path string) (bool, error) {
	all, err := Points()
	if err != nil {
		return false, err
	}
	for _, p := range all {
		if p == path {
			return true, nil
		}
	}
	return false, nil
}

// Unescape undoes the octal escapes (\040 for a space) the kernel writes in
// mountinfo paths.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount is one line of mountinfo.
type Mount struct {
	Point   string
	FSType  string
	Source  string
	Options string // the per-mount options: "ro,nosuid,nodev,relatime"
	Super   string // the filesystem's own options: overlayfs' "lowerdir=..."
}

// Lookup returns the mount on path, the last one made if several are
// stacked there; ok is false if none is.
func Lookup(path string) (m Mount, ok bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return m, false, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i > 5 {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+4 || Unescape(fields[4]) != path {
			continue
		}
		m = Mount{Point: path, Options: fields[5], FSType: fields[sep+1], Source: Unescape(fields[sep+2]), Super: Unescape(fields[sep+3])}
		ok = true
	}
	if err := s.Err(); err != nil {
		return Mount{}, false, fmt.Errorf("reading mounts: %w", err)
	}
	return m, ok, nil
}

// Option returns the value of the option key in a comma-separated list of
// options such as Super: Option("lowerdir=/a:/b,upperdir=/c", "upperdir")
// is "/c".
func Option(options, key string) (string, bool) {
	for _, o := range strings.Split(options, ",") {
		if k, v, _ := strings.Cut(o, "="); k == key {
			return v, true
		}
	}
	return "", false
}
