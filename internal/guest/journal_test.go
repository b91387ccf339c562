package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournald: every start writes the drop-in that keeps the journal in
// /var with a cap, and unmasks the unit that moves it there; a unit file
// of the VM's own in the mask's place stays.
func TestJournald(t *testing.T) {
	vm := testVM(t)
	if err := Seed(vm, makeImage(t)); err != nil {
		t.Fatal(err)
	}
	mask := filepath.Join(vm.EtcDir, journalFlush)
	os.MkdirAll(filepath.Dir(mask), 0o755)
	if err := os.Symlink("/dev/null", mask); err != nil {
		t.Fatal(err)
	}
	if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(vm.EtcDir, JournaldDropIn))
	if err != nil || !strings.Contains(string(b), "\nStorage=persistent\n") || !strings.Contains(string(b), "\nSystemMaxUse="+JournalMaxUse+"\n") {
		t.Errorf("the drop-in: %q, %v", b, err)
	}
	if _, err := os.Lstat(mask); !os.IsNotExist(err) {
		t.Errorf("systemd-journal-flush.service is still masked: %v", err)
	}

	own := "[Service]\n# the VM's own\n"
	os.WriteFile(mask, []byte(own), 0o644)
	if err := WriteManaged(vm, Keys{Admin: testKey(t, 1, AdminComment)}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(mask); err != nil || string(b) != own {
		t.Errorf("the VM's own unit file was changed: %q, %v", b, err)
	}
}
