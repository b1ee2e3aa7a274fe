// Package provider is what the transient-builder commands need of a cloud:
// make a builder, list, look up and remove the ones nbship made, and say
// what they cost. Each cloud has its own package (provider/hetzner,
// provider/packet) whose constructor returns a concrete type that
// satisfies Provider.
package provider

import (
	"context"
	"io"
	"time"
)

// Provider is one cloud account as the builders commands see it.
type Provider interface {
	// Name is the provider's name as --provider takes it ("hetzner").
	Name() string
	// Create makes one builder. It costs money from the moment it
	// returns without error until Delete.
	Create(ctx context.Context, r CreateRequest) (*Server, error)
	// List returns the builders nbship made, sorted by name and ID.
	List(ctx context.Context) ([]Server, error)
	// Get returns one builder nbship made.
	Get(ctx context.Context, id string) (*Server, error)
	// Delete removes a builder nbship made.
	Delete(ctx context.Context, id string) error
	// Prices returns the hourly and monthly prices, sorted by type and
	// location, of the types and locations q asks for.
	Prices(ctx context.Context, q PriceQuery) ([]Price, error)
}

// CreateRequest is one builder to make. Providers ignore the fields that
// do not apply to them.
type CreateRequest struct {
	Name     string // host name of the builder
	Type     string // server type or plan: cax21, c2.large.arm
	Location string // location or metro: fsn1, da

	Image        string // image the server is made from before its rescue boot (hetzner)
	SSHPublicKey string // authorized_keys line the rescue system lets in (hetzner)
	IPXEURL      string // netboot.ipxe the builder boots (packet)
	MaxBid       float64
	Tags         []string // tags on the device (packet)

	Progress io.Writer // one line per step; nil discards
}

// Server is a builder as a provider reports it.
type Server struct {
	Provider string    `json:"provider"`
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	Location string    `json:"location"`
	Arch     string    `json:"arch"` // as uname -m says it: x86_64, aarch64
	IPv4     string    `json:"ipv4,omitempty"`
	IPv6     string    `json:"ipv6,omitempty"`
	Status   string    `json:"status"`  // the provider's word: running, active, …
	Running  bool      `json:"running"` // up and billed
	Created  time.Time `json:"created,omitzero"`
	Hourly   float64   `json:"hourly,omitempty"` // price per hour, gross
	Currency string    `json:"currency,omitempty"`
	Labels   []string  `json:"labels,omitempty"` // tags or key=value labels
}

// PriceQuery narrows Prices; empty fields match everything.
type PriceQuery struct {
	Type     string
	Location string
}

// Price is what one server type costs in one location.
type Price struct {
	Type     string  `json:"type"`
	Location string  `json:"location"`
	Arch     string  `json:"arch,omitempty"`
	Hourly   float64 `json:"hourly"`
	Monthly  float64 `json:"monthly,omitempty"` // 0 when the provider bills by the hour only
	Currency string  `json:"currency"`
	Note     string  `json:"note,omitempty"` // "spot", "gross"
}

// Arch maps the words providers use for an architecture to uname -m's.
func Arch(s string) string {
	switch s {
	case "x86", "x86_64", "amd64", "x86_64-linux":
		return "x86_64"
	case "arm", "arm64", "aarch64", "aarch64-linux":
		return "aarch64"
	}
	return s
}

// System is the Nix system of a uname -m architecture, or "".
func System(arch string) string {
	switch Arch(arch) {
	case "x86_64":
		return "x86_64-linux"
	case "aarch64":
		return "aarch64-linux"
	}
	return ""
}
