package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at build time with -ldflags "-X ...cli.Version=v1.2.3".
var Version = ""

func versionCmd() *command {
	return &command{
		name:   "version",
		args:   "",
		short:  "print the version",
		noFile: true,
		long:   "Prints the version of microvm and the Go it was built with.",
		run: func(e *env, args []string) error {
			fmt.Fprintf(e.stdout, "microvm %s, %s\n", version(), runtime.Version())
			return nil
		},
	}
}

// version is the program's version: Version, or the module's version and
// its commit as the build recorded them.
func version() string {
	v := Version
	if info, ok := debug.ReadBuildInfo(); v == "" && ok {
		v = info.Main.Version
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return v
}
