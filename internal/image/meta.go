package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/simple-microvm-infra/microvm/internal/config"
)

// Meta is what an image was made from, kept beside it in
// host.ImageMeta(name). Images made before it existed have none.
type Meta struct {
	Recipe  string    `json:"recipe,omitempty"`  // the recipe Build followed; empty for an imported image
	Version int       `json:"version,omitempty"` // that recipe's Version
	Source  string    `json:"source,omitempty"`  // the tarball Import unpacked
	Made    time.Time `json:"made"`

	// A version of a declared image ([image.NAME], BuildDeclared):
	Image      string `json:"image,omitempty"`      // its name
	From       string `json:"from,omitempty"`       // its base's directory under images
	Layered    bool   `json:"layered,omitempty"`    // an overlay layer over From (storage = "dir"), not a whole tree
	Summary    string `json:"summary,omitempty"`    // what it was made of, as config.Image.Summary says
	Definition string `json:"definition,omitempty"` // as config.Image.Definition wrote it
}

// String says where the image comes from: "debian v2", "imported from
// /srv/alpine.tar.gz", "debian + nginx-light" for a declared image, or
// "unknown" for an image without metadata.
func (m Meta) String() string {
	switch {
	case m.Image != "":
		return m.Summary
	case m.Recipe != "":
		return fmt.Sprintf("%s v%d", m.Recipe, m.Version)
	case m.Source != "":
		return "imported from " + m.Source
	}
	return "unknown"
}

// Current reports whether the image was made by the recipe of its name as
// it is now; false for an imported image, one made by an older recipe,
// and one without metadata.
func (m Meta) Current(name string) bool {
	r, err := FindRecipe(name)
	return err == nil && m.Recipe == r.Name && m.Version == r.Version
}

// ReadMeta reads the metadata of the image name; an image without any
// (made before images had it) gives the zero Meta.
func ReadMeta(host config.Host, name string) (Meta, error) {
	var m Meta
	b, err := os.ReadFile(host.ImageMeta(name))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("reading image %s: %w", name, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("reading %s: %w", host.ImageMeta(name), err)
	}
	return m, nil
}

func writeMeta(host config.Host, name string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(host.ImageMeta(name), append(b, '\n'), 0o644)
}
