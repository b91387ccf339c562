package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Where a command finds infra.toml when -f/--file does not name it.
const (
	// EnvFile is the environment variable that names the file.
	EnvFile = "MICROVM_CONFIG"
	// LocalFile is read from the current directory if it is there.
	LocalFile = "infra.toml"
)

// SystemFile is the host's own infra.toml, where the tutorial puts it;
// tests point it elsewhere.
var SystemFile = "/etc/microvm/infra.toml"

// Locate says which infra.toml to read: flag (from -f/--file) if given,
// else $MICROVM_CONFIG if set, else ./infra.toml if it exists, else
// SystemFile if it exists. A file named by the flag or the variable is
// returned as it is, for Load to report if it cannot be read; when nothing
// names one and neither default exists, the error says what was tried.
func Locate(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env := os.Getenv(EnvFile); env != "" {
		return env, nil
	}
	for _, p := range []string{LocalFile, SystemFile} {
		if _, err := os.Stat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
	}
	return "", fmt.Errorf("no infra.toml to read: -f/--file was not given, $%s is not set, and neither ./%s nor %s exists; copy examples/infra.toml to %s, or name the file with -f FILE",
		EnvFile, LocalFile, SystemFile, SystemFile)
}

// Suggest returns " (did you mean X?)" for the word of known closest to s,
// or "" when none is close: for a misspelt key, flag or command.
func Suggest(s string, known []string) string { return suggest(s, known) }

// ImageBuildLog is where `microvm image build` writes the whole output of
// the build (debootstrap's hundreds of lines), beside the image views.
func (h Host) ImageBuildLog(name string) string {
	return filepath.Join(h.RunDir, "images", name+".build.log")
}
