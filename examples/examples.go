// Package examples holds the example infra.toml, embedded so that
// `microvm demo` runs the design's setup without any file at hand.
package examples

import _ "embed"

// InfraTOML is examples/infra.toml: the design's 4 VMs.
//
//go:embed infra.toml
var InfraTOML []byte
