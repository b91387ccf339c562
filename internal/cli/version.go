package cli

import (
	"fmt"
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
			v := Version
			info, ok := debug.ReadBuildInfo()
			if v == "" && ok {
				v = info.Main.Version
				for _, s := range info.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						v += " (" + s.Value[:12] + ")"
					}
				}
			}
			goVersion := "unknown"
			if ok {
				goVersion = info.GoVersion
			}
			fmt.Fprintf(e.stdout, "microvm %s, %s\n", v, goVersion)
			return nil
		},
	}
}
