package lifecycle

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/simple-microvm-infra/microvm/internal/action"
	"github.com/simple-microvm-infra/microvm/internal/config"
	"github.com/simple-microvm-infra/microvm/internal/image"
	"github.com/simple-microvm-infra/microvm/internal/runner"
)

// imageAction builds a declared image, or removes old versions of
// declared images.
type imageAction struct {
	text string
	do   func() error
}

func (a imageAction) String() string { return a.text }
func (a imageAction) Apply() error   { return a.do() }

// imageBuilds builds, before any VM starts, each declared image that is
// not built as the file declares it (and its base first). The build's
// phases go to w, its whole output to its log; SIGINT or SIGTERM stops it
// and leaves nothing of it behind.
func imageBuilds(w io.Writer, in *config.Infra) ([]action.Action, error) {
	missing, err := image.ToBuild(in)
	if err != nil {
		return nil, err
	}
	var out []action.Action
	for _, m := range missing {
		out = append(out, imageAction{
			text: fmt.Sprintf("microvm image build %s   # %s (%s); log in %s", m.Name, m.Summary, m.Why, in.Host.ImageBuildLog(m.Name)),
			do:   func() error { return BuildImage(w, in, m.Name) },
		})
	}
	return out, nil
}

// BuildImage builds the declared image name (image.BuildDeclared), its
// phases to w and its whole output to its log, until it ends or SIGINT or
// SIGTERM stops it.
func BuildImage(w io.Writer, in *config.Infra, name string) error {
	log, err := image.OpenBuildLog(in.Host, name)
	if err != nil {
		return err
	}
	defer log.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	err = image.BuildDeclared(ctx, in, name, &phases{w: w, log: log, prefix: name + ": "}, image.Options{Boot: image.BootFiles})
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("stopped; nothing of image %s was kept (the log is %s)", name, log.Name())
	}
	if err != nil {
		return fmt.Errorf("%w\nthe whole log is %s", err, log.Name())
	}
	return nil
}

// phases passes the phase lines of a build ("==> ...") to w and everything
// to log.
type phases struct {
	w, log io.Writer
	prefix string
	buf    []byte
}

func (p *phases) Write(b []byte) (int, error) {
	_, _ = p.log.Write(b) // a full disk must not stop the build
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		if line, ok := strings.CutPrefix(string(p.buf[:i]), "==> "); ok {
			fmt.Fprintf(p.w, "%s%s\n", p.prefix, line)
		}
		p.buf = p.buf[i+1:]
	}
}

// imagePrune removes, after the VMs have restarted, the versions of
// declared images that are neither current nor booted by a running VM
// (a VM keeps the version it booted until it restarts).
func imagePrune(w io.Writer, in *config.Infra) (action.Action, error) {
	old, err := image.Old(in)
	if err != nil || len(old) == 0 {
		return nil, err
	}
	return imageAction{
		text: fmt.Sprintf("microvm image prune   # %s, unless a running VM still boots it", strings.Join(old, ", ")),
		do:   func() error { return PruneImages(w, in) },
	}, nil
}

// PruneImages removes the old versions of declared images that no VM
// boots, and says which it kept.
func PruneImages(w io.Writer, in *config.Infra) error {
	old, err := image.Old(in)
	if err != nil {
		return err
	}
	inUse, err := runner.ReleaseUnused(in.Host, old)
	if err != nil {
		return err
	}
	for dir, vms := range inUse {
		fmt.Fprintf(w, "image %s kept: %s still boots it (it goes once they restart or stop)\n", dir, strings.Join(vms, ", "))
	}
	for _, dir := range image.Prunable(in.Host, old, inUse) {
		if err := image.Remove(in.Host, dir, nil); err != nil {
			return err
		}
		fmt.Fprintf(w, "image %s removed\n", dir)
	}
	return nil
}
