package guest

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/safedir"
)

// A guest's journal outlives its restarts: it is kept in the VM's own
// /var (/var/log/journal), capped in size, where `microvm logs NAME
// --guest` reads it from the host. The lean image keeps it in memory
// (Storage=volatile in /usr/lib/systemd/journald.conf.d/microvm.conf) and
// masks systemd-journal-flush.service, which moves it to /var; each VM's
// /etc overrides both at every start, so no image needs building again.
// A drop-in of the VM's own that sorts after microvm.conf (zz-local.conf)
// overrides these settings in turn.

// Journal paths in the VM's /etc, and the cap.
const (
	JournaldDropIn = "systemd/journald.conf.d/microvm.conf"
	journalFlush   = "systemd/system/systemd-journal-flush.service"
	// JournalMaxUse is the most the journal takes of the VM's /var;
	// journald removes the oldest files past it.
	JournalMaxUse = "64M"
)

const journaldConf = header + "# The journal is kept in /var/log/journal, for `microvm logs NAME --guest`,\n" +
	"# and capped; a drop-in of your own sorting after this one overrides it.\n" +
	"[Journal]\nStorage=persistent\nSystemMaxUse=" + JournalMaxUse + "\nSystemMaxFileSize=8M\n"

// writeJournald writes the journal's drop-in into etc (the VM's /etc) and
// unmasks systemd-journal-flush.service, which moves the journal from
// /run to /var once /var is there: without it, journald stays in memory.
func writeJournald(etc *safedir.Dir) error {
	d, err := etc.MkdirAll("systemd/journald.conf.d", 0o755)
	if err != nil {
		return fmt.Errorf("writing /etc/%s: %w", JournaldDropIn, err)
	}
	defer d.Close()
	if err := d.WriteFile("microvm.conf", []byte(journaldConf), 0o644); err != nil {
		return fmt.Errorf("writing /etc/%s: %w", JournaldDropIn, err)
	}
	// A mask is a symlink to /dev/null; a symlink to the unit itself
	// means what no link means. A file of the VM's own stays.
	st, err := etc.Lstat(journalFlush)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("unmasking %s: %w", journalFlush, err)
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		if err := etc.Remove(journalFlush); err != nil {
			return fmt.Errorf("unmasking %s: %w", journalFlush, err)
		}
	}
	return nil
}
