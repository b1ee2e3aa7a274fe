// Package version holds the build's version string. Release builds set it
// with -ldflags "-X github.com/nbship/nbship/internal/version.Version=...";
// the controller compares it with the nbship found on a remote host.
package version

// Version is the nbship version. "dev" builds are never reused from a
// remote PATH: they are always uploaded by content hash.
var Version = "dev"
