package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/lifecycle"
	"github.com/simple-microvm-infra/microvm/internal/vmm"
)

// consoleEscape ends a console session: Ctrl-] (as telnet and virsh do).
const consoleEscape = 0x1d

func consoleCmd() *command {
	return &command{
		name:  "console",
		args:  "[-f FILE] NAME",
		short: "attach to a VM's serial console (Ctrl-] to detach)",
		long: `
Attaches the terminal to the VM's serial console (ttyS0), where the kernel
and the guest print their boot messages and a login prompt waits: what a
person uses when the VM's network or sshd is broken. Ctrl-] detaches; the
VM keeps running. One person at a time.

The console is also logged, whether or not anyone is attached, to
RUN_DIR/NAME/console.log (microvm logs --console NAME), rotated at 10 MiB. With Cloud
Hypervisor the console is that log only: console follows it, read-only.
Needs root.

Examples:
  sudo microvm console vm1`,
		run: func(e *env, args []string) error {
			_, vm, err := e.oneVM(args)
			if err != nil {
				return err
			}
			if h, _ := vmm.Lookup(vm.Hypervisor); h.Console != vmm.ConsoleSocket {
				fmt.Fprintf(e.stderr, "%s runs under %s, whose console is a log: following %s (read-only; Ctrl-C ends)\n", vm.Name, h.Title, vm.ConsoleLog())
				return showFile(e, vm, true, 0, true)
			}
			// The socket is the VMM's: talk to it only if the VMM that
			// was started listens on it (vmm.Dial).
			m, err := e.manager()
			if err != nil {
				return err
			}
			s := lifecycle.StateOf(m, vm)
			switch s.State {
			case lifecycle.Stopped:
				return fmt.Errorf("%s is not running; start it with: microvm up %s", vm.Name, vm.Name)
			case lifecycle.Starting:
				return fmt.Errorf("%s is starting: its VMM is not up yet; try again in a moment", vm.Name)
			case lifecycle.Orphaned:
				return fmt.Errorf("%s was left running without its supervisor, which was killed; microvm restart %s ends what is left and starts it again", vm.Name, vm.Name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			c, err := vmm.Dial(ctx, vm.ConsoleSocket(), s.Started.VMMPid)
			cancel()
			if err != nil {
				return fmt.Errorf("attaching to %s's console: %w (is someone else attached?)", vm.Name, err)
			}
			defer c.Close()
			if f, ok := e.stdin.(*os.File); ok {
				if old, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
					raw := *old
					raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
					raw.Oflag &^= unix.OPOST
					raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
					raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
					if unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, &raw) == nil {
						// Put back what worked a moment ago; nothing more to do if not.
						defer unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, old)
					}
				}
			}
			fmt.Fprintf(e.stderr, "attached to %s's console; Ctrl-] detaches\r\n", vm.Name)
			done := make(chan error, 2)
			go func() { _, err := io.Copy(e.stdout, c); done <- err }()
			go func() {
				buf := make([]byte, 256)
				for {
					n, err := e.stdin.Read(buf)
					for i := 0; i < n; i++ {
						if buf[i] == consoleEscape {
							_, _ = c.Write(buf[:i]) // detaching anyway: a lost tail is no matter
							done <- nil
							return
						}
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							done <- werr
							return
						}
					}
					if err != nil {
						done <- nil // end of input: detach
						return
					}
				}
			}()
			<-done
			fmt.Fprintf(e.stderr, "\r\ndetached from %s's console\r\n", vm.Name)
			return nil
		},
	}
}
