package cli

import (
	"fmt"
	"io"
)

func completionCmd() *command {
	return &command{
		name:   "completion",
		args:   "bash|zsh|fish",
		short:  "print the shell completion script for bash, zsh or fish",
		noFile: true,
		long: `
Prints a script that makes the shell complete microvm's commands, flags and
the names of the VMs in infra.toml, as kubectl, incus and tailscale do.

Examples:
  microvm completion bash > /etc/bash_completion.d/microvm
  microvm completion zsh > "${fpath[1]}/_microvm"
  microvm completion fish > ~/.config/fish/completions/microvm.fish
  source <(microvm completion bash)          for this shell only`,
		complete: func(*env, []string) []string { return []string{"bash", "zsh", "fish"} },
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%w: name the shell: bash, zsh or fish", errUsage)
			}
			// The script describes the whole tree, which this command
			// cannot reach from its own env: build it again.
			root := tree(nil, io.Discard, io.Discard)
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(e.stdout, true)
			case "zsh":
				return root.GenZshCompletion(e.stdout)
			case "fish":
				return root.GenFishCompletion(e.stdout, true)
			}
			return fmt.Errorf("%w: no completion for %q; use bash, zsh or fish", errUsage, args[0])
		},
	}
}

// vmNames completes VM names from the file the command would read.
func vmNames(e *env, _ []string) []string {
	in, err := e.load()
	if err != nil {
		return nil
	}
	var names []string
	for _, vm := range in.VMs {
		names = append(names, vm.Name)
	}
	return names
}
