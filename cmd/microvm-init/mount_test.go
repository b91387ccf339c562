package main

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/simple-microvm-infra/microvm/internal/kernel"
	"github.com/simple-microvm-infra/microvm/internal/virtiofs"
)

func TestShareMounts(t *testing.T) {
	want := []mount{
		{"image", "/mnt", "virtiofs", unix.MS_RDONLY, ""},
		{"etc", "/mnt/etc", "virtiofs", 0, ""},
		{"var", "/mnt/var", "virtiofs", 0, ""},
	}
	if got := shareMounts("/mnt", false); !reflect.DeepEqual(got, want) {
		t.Errorf("shareMounts(/mnt) =\n%v\nwant\n%v", got, want)
	}
}

// TestSharedNames checks the names the init keeps to itself (so that it
// does not link the host's packages) against the packages that define them.
func TestSharedNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{tagImage, virtiofs.TagImage},
		{tagEtc, virtiofs.TagEtc},
		{tagVar, virtiofs.TagVar},
		{loadOrder, kernel.LoadOrder},
	} {
		if c.got != c.want {
			t.Errorf("the init uses %q where the host uses %q", c.got, c.want)
		}
	}
}
