package cli

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/mountinfo"
	"github.com/simple-microvm-infra/microvm/internal/sandbox"
	"github.com/simple-microvm-infra/microvm/internal/testenv"
)

// TestImageBuildStopped: SIGINT or SIGTERM while debootstrap downloads
// stops the build and leaves nothing: no image, no staging directory, no
// process, no mount; the log it named is there. The mirror is a server in
// the test's own namespace that takes connections and never answers, so
// debootstrap is surely still at work when the signal comes.
func TestImageBuildStopped(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedCommands(t, "debootstrap", "ip")
	bin := testenv.Binaries(t)
	ns := testenv.NetNS(t)
	ipExec(t, ns, "link", "set", "lo", "up")
	var ln net.Listener
	if err := sandbox.Do(ns, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	asked := make(chan struct{}, 100)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			asked <- struct{}{}
		}
	}()

	state := t.TempDir()
	run := testenv.RunDir(t, "mvi")
	file := writeFile(t, "[host]\nuplink = \"eth0\"\nstate_dir = \""+state+"\"\nrun_dir = \""+run+"\"\n[vm.vm1]\nsubnet = \"10.1.0.0/24\"\n")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			var out testenv.SyncBuffer
			cmd := sandbox.Command(ns, bin, "image", "build", "debian", "--mirror", "http://127.0.0.1:8080/debian", "-f", file)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-asked:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("debootstrap never asked the mirror:\n%s", out.String())
			}
			staging, _ := filepath.Glob(filepath.Join(state, "images", ".debian.new-*"))
			if len(staging) == 0 {
				t.Errorf("no staging directory while building")
			}
			// ip netns exec execs microvm in place: this is microvm.
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("a stopped build exited 0")
				}
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				t.Fatalf("the build did not stop a minute after %s:\n%s", sig, out.String())
			}
			t.Logf("microvm image build, stopped by %s:\n%s", sig, out.String())
			log := filepath.Join(run, "images", "debian.build.log")
			if !strings.Contains(out.String(), "the whole log is in "+log) || !strings.Contains(out.String(), "nothing of image debian was kept") {
				t.Errorf("output does not name the log and what was kept")
			}
			if b, err := os.ReadFile(log); err != nil || !strings.Contains(string(b), "==> debootstrap bookworm from http://127.0.0.1:8080/debian") {
				t.Errorf("the log %s: %v\n%s", log, err, b)
			}
			if left, _ := os.ReadDir(filepath.Join(state, "images")); len(left) > 0 {
				t.Errorf("left in %s/images: %v", state, left)
			}
			if m, _ := mountinfo.Under(state); len(m) > 0 {
				t.Errorf("mounts left: %v", m)
			}
			if pids := processesUsing(state); len(pids) > 0 {
				t.Errorf("processes left that name %s: %v", state, pids)
			}
		})
	}
}

// processesUsing lists the processes whose command line names path.
func processesUsing(path string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), path) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestProgress: the phases are shown with the time, the tool's lines only
// go to the log; on a terminal the line is redrawn with the tool's latest.
func TestProgress(t *testing.T) {
	input := "==> debootstrap bookworm\nI: Retrieving InRelease\nI: Unpacking libc6\n==> copying the kernel\n"
	var out, log strings.Builder
	p := newProgress(&out, &log)
	p.Write([]byte(input[:30])) // lines come in pieces
	p.Write([]byte(input[30:]))
	p.Close()
	if log.String() != input {
		t.Errorf("log: got %q, want everything: %q", log.String(), input)
	}
	if want := "[    0s] debootstrap bookworm\n[    0s] copying the kernel\n"; out.String() != want {
		t.Errorf("plain output: got %q, want %q", out.String(), want)
	}

	var term strings.Builder
	tp := &progress{out: &term, log: &log, tty: true, width: 40, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go tp.tick()
	tp.Write([]byte(input))
	tp.Close()
	got := term.String()
	for _, want := range []string{"\r\033[K[    0s] debootstrap bookworm  I: Unpac", "\r\033[K[    0s] debootstrap bookworm\n", "\r\033[K[    0s] copying the kernel\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, got)
		}
	}
}
