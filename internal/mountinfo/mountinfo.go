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
