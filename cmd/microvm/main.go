// Command microvm turns a Linux host into a small microVM hypervisor from
// one declarative file, infra.toml. See `microvm help`.
package main

import (
	"os"

	"github.com/simple-microvm-infra/microvm/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
