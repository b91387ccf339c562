package hostnet

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestReadUsers reads the VMs' users from /etc/passwd and /etc/group in
// one pass, as os/user (getpwnam, getgrouplist) would give them.
func TestReadUsers(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	write := func(name, text string) {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(passwd, "root:x:0:0:root:/root:/bin/bash\n"+
		"microvm-vm1:x:990:990:microvm VM vm1:/nonexistent:/usr/sbin/nologin\n"+
		"microvm-vm2:x:991:991:microvm VM vm2,room 4:/nonexistent:/usr/sbin/nologin\n"+
		"broken:x:notanumber:1::/:/bin/sh\n")
	write(group, "root:x:0:\nkvm:x:108:microvm-vm1,someone\nmicrovm-vm1:x:990:\nmicrovm-vm2:x:991:\nextra:x:500:microvm-vm2\n")
	defer func(p, g string) { passwdFile, groupFile = p, g }(passwdFile, groupFile)
	passwdFile, groupFile = passwd, group

	db, err := readUsers([]string{"microvm-vm1", "microvm-vm2", "microvm-not-there-at-all"})
	if err != nil {
		t.Fatal(err)
	}
	if db.kvm == nil || *db.kvm != 108 {
		t.Errorf("kvm = %v, want 108", db.kvm)
	}
	for _, tt := range []struct {
		name, comment string
		uid, gid      uint32
		groups        []uint32
	}{
		{"microvm-vm1", "microvm VM vm1", 990, 990, []uint32{990, 108}},
		{"microvm-vm2", "microvm VM vm2", 991, 991, []uint32{991, 500}},
	} {
		id, ok := db.ids[tt.name]
		if !ok {
			t.Errorf("%s: missing", tt.name)
			continue
		}
		if id.UID != tt.uid || id.GID != tt.gid || !slices.Equal(id.Groups, tt.groups) {
			t.Errorf("%s: got %+v, want uid %d gid %d groups %v", tt.name, id, tt.uid, tt.gid, tt.groups)
		}
		if got := db.comments[tt.name]; got != tt.comment {
			t.Errorf("%s: comment %q, want %q", tt.name, got, tt.comment)
		}
	}
	if _, ok := db.ids["microvm-not-there-at-all"]; ok {
		t.Errorf("a user in neither file nor NSS was found")
	}
}
