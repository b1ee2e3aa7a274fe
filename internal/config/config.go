// Package config reads builders.conf, the `key value` file the old shell
// scripts read. The seed's file is accepted unchanged; nbship's own keys are
// optional and have the defaults the scripts hard-coded.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Config is the parsed file. Zero values mean "not set"; use Require to
// insist on keys a flow needs.
type Config struct {
	Path string // the file it came from, for messages

	BuildHost     string // buildHost: SSH destination of the build host
	PXEHost       string // pxeHost: SSH destination of the netboot web server
	PXEDir        string // pxeDir: directory nginx serves on pxeHost
	OpenSSLServer string // opensslServer: where the build host reaches the PXE receiver
	OpenSSLPort   int    // opensslPort: the receiver's TCP port

	Instance        string // instance: default c2.large.arm (aarch64) / m2.xlarge.x86 (x86_64)
	NixFile         string // nixFile: default ./instances/INSTANCE.nix
	BuildJobs       int    // buildJobs: nix-store -j, default 5
	BuildCores      int    // buildCores: nix-store --cores, default 45
	KeepGenerations int    // keepGenerations: generations kept per slot, default 3
	BaseURL         string // baseURL: where pxeDir is served over HTTP

	PacketKey       string // packetKey: Packet API token (secret; never printed)
	PacketProjectID string // packetProjectId

	HcloudToken string // hcloudToken: Hetzner Cloud API token (secret; never printed)

	Profiles []Profile // profile NAME SYSTEM lines: extra instance types

	set map[string]int // key -> line it was set on
}

// Profile declares an instance type beyond the built-in ones.
type Profile struct {
	Name   string
	System string // aarch64-linux or x86_64-linux
	Line   int
}

// Defaults used when the file does not say otherwise.
const (
	DefaultBuildJobs       = 5
	DefaultBuildCores      = 45
	DefaultKeepGenerations = 3
)

// Error is a problem at one line of the file.
type Error struct {
	Path string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config: %s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("config: %s: %s", e.Path, e.Msg)
}

// MissingError says a key a flow needs is absent, with an example line.
type MissingError struct {
	Path    string
	Key     string
	Example string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("config: %s: missing key %q; add a line like: %s", e.Path, e.Key, e.Example)
}

type key struct {
	example string
	set     func(c *Config, v string) error
}

var keys = map[string]key{
	"buildHost":       {"buildHost       root@my.aarch64.builder", str(func(c *Config) *string { return &c.BuildHost })},
	"pxeHost":         {"pxeHost         netboot@my.netboot.server", str(func(c *Config) *string { return &c.PXEHost })},
	"pxeDir":          {"pxeDir          /var/lib/nginx/netboot/", str(func(c *Config) *string { return &c.PXEDir })},
	"opensslServer":   {"opensslServer   my.netboot.server", str(func(c *Config) *string { return &c.OpenSSLServer })},
	"opensslPort":     {"opensslPort     61616", port(func(c *Config) *int { return &c.OpenSSLPort })},
	"instance":        {"instance        c2.large.arm", str(func(c *Config) *string { return &c.Instance })},
	"nixFile":         {"nixFile         ./instances/c2.large.arm.nix", str(func(c *Config) *string { return &c.NixFile })},
	"buildJobs":       {"buildJobs       5", positive(func(c *Config) *int { return &c.BuildJobs })},
	"buildCores":      {"buildCores      45", positive(func(c *Config) *int { return &c.BuildCores })},
	"keepGenerations": {"keepGenerations 3", positive(func(c *Config) *int { return &c.KeepGenerations })},
	"baseURL":         {"baseURL         http://my.netboot.server/", str(func(c *Config) *string { return &c.BaseURL })},
	"packetKey":       {"packetKey       <API token>", str(func(c *Config) *string { return &c.PacketKey })},
	"packetProjectId": {"packetProjectId 00000000-0000-0000-0000-000000000000", str(func(c *Config) *string { return &c.PacketProjectID })},
	"hcloudToken":     {"hcloudToken     <API token>", str(func(c *Config) *string { return &c.HcloudToken })},
	"profile":         {"profile         c3.large.arm aarch64-linux", nil}, // repeatable; handled in parse
}

func str(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		if strings.ContainsAny(v, " \t") {
			return errors.New("value must be one word")
		}
		*field(c) = v
		return nil
	}
}

func positive(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<20 {
			return fmt.Errorf("value %q must be a positive whole number", v)
		}
		*field(c) = n
		return nil
	}
}

func port(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("value %q must be a TCP port (1-65535)", v)
		}
		*field(c) = n
		return nil
	}
}

// maxFileSize bounds what Load reads: a config file is a few hundred bytes.
const maxFileSize = 1 << 20

// Load reads and parses the file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, &Error{Path: path, Msg: "file is larger than 1 MiB; is this the right file?"}
	}
	return Parse(path, data)
}

// Parse parses the file's contents; path is only used in messages.
func Parse(path string, data []byte) (*Config, error) {
	c := &Config{Path: path, set: map[string]int{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxFileSize+1)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if !utf8.ValidString(line) {
			return nil, &Error{path, n, "line is not valid UTF-8"}
		}
		if i := strings.IndexFunc(line, func(r rune) bool { return unicode.IsControl(r) && r != '\t' && r != '\r' }); i >= 0 {
			return nil, &Error{path, n, fmt.Sprintf("control character %q at column %d", line[i], i+1)}
		}
		line = strings.TrimRight(line, "\r")
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		k, ok := keys[name]
		if !ok {
			if s := suggest(name); s != "" {
				return nil, &Error{path, n, fmt.Sprintf("unknown key %q (did you mean %q?)", name, s)}
			}
			return nil, &Error{path, n, fmt.Sprintf("unknown key %q", name)}
		}
		if len(fields) == 1 {
			return nil, &Error{path, n, fmt.Sprintf("key %q has no value; write it like: %s", name, k.example)}
		}
		if name == "profile" {
			if len(fields) != 3 {
				return nil, &Error{path, n, "profile takes a name and a system; write it like: " + k.example}
			}
			if fields[2] != "aarch64-linux" && fields[2] != "x86_64-linux" {
				return nil, &Error{path, n, fmt.Sprintf("profile %s: system %q is not aarch64-linux or x86_64-linux", fields[1], fields[2])}
			}
			c.Profiles = append(c.Profiles, Profile{Name: fields[1], System: fields[2], Line: n})
			continue
		}
		if prev, dup := c.set[name]; dup {
			return nil, &Error{path, n, fmt.Sprintf("key %q is already set on line %d", name, prev)}
		}
		if err := k.set(c, strings.Join(fields[1:], " ")); err != nil {
			return nil, &Error{path, n, fmt.Sprintf("%s: %v", name, err)}
		}
		c.set[name] = n
	}
	if err := sc.Err(); err != nil {
		return nil, &Error{path, n + 1, err.Error()}
	}
	return c, nil
}

// suggest returns a known key that differs from name only in case.
func suggest(name string) string {
	for k := range keys {
		if strings.EqualFold(k, name) {
			return k
		}
	}
	return ""
}

// Require returns a MissingError for the first of names that the file does
// not set, in the order given.
func (c *Config) Require(names ...string) error {
	for _, name := range names {
		if _, ok := c.set[name]; !ok {
			ex := name
			if k, ok := keys[name]; ok {
				ex = k.example
			}
			return &MissingError{Path: c.Path, Key: name, Example: ex}
		}
	}
	return nil
}

// Has reports whether the file sets key.
func (c *Config) Has(key string) bool {
	_, ok := c.set[key]
	return ok
}

// Jobs returns buildJobs or its default.
func (c *Config) Jobs() int { return orDefault(c.BuildJobs, DefaultBuildJobs) }

// Cores returns buildCores or its default.
func (c *Config) Cores() int { return orDefault(c.BuildCores, DefaultBuildCores) }

// Keep returns keepGenerations or its default.
func (c *Config) Keep() int { return orDefault(c.KeepGenerations, DefaultKeepGenerations) }

func orDefault(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}
