// Package version holds the build's version string, set at link time so
// client and gateway can compare what they run.
package version

// Version is overridden with -ldflags "-X github.com/bridgetun/bridgetun/internal/version.Version=...".
var Version = "v0.1.0-dev"
