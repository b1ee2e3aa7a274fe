package metal

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Systems Nix knows the builders by.
const (
	SystemAarch64 = "aarch64-linux"
	SystemX86     = "x86_64-linux"
)

// legacyPlans are the old Packet plan names that say neither arm nor x86.
var legacyPlans = map[string]string{
	"baremetal_0":  SystemX86,
	"baremetal_1":  SystemX86,
	"baremetal_1e": SystemX86,
	"baremetal_2":  SystemX86,
	"baremetal_2a": SystemAarch64, // c1.large.arm
	"baremetal_3":  SystemX86,
	"baremetal_s":  SystemX86,
}

// PlanSystem returns the Nix system of a plan: aarch64-linux for the arm
// plans (c1.large.arm, c2.large.arm, c3.large.arm64, any slug with "arm"),
// x86_64-linux for the x86 ones. extra (plan → system) is consulted first.
func PlanSystem(plan string, extra map[string]string) (string, error) {
	if s, ok := extra[plan]; ok {
		return s, nil
	}
	if s, ok := legacyPlans[plan]; ok {
		return s, nil
	}
	switch {
	case strings.Contains(plan, "arm"):
		return SystemAarch64, nil
	case strings.Contains(plan, "x86"):
		return SystemX86, nil
	}
	return "", fmt.Errorf("machines: plan %q is neither arm nor x86; add a line \"profile %s SYSTEM\" to the config file", plan, plan)
}

// MachinesOptions say how to write the machines file.
type MachinesOptions struct {
	Tag         string // only devices with this tag ("" for all)
	SkipTag     string // but not those with this one (DrainTag)
	User        string // SSH user Hydra logs in as
	SSHKey      string // path of the identity Hydra uses; "" for none
	MaxJobs     int
	SpeedFactor int
	Features    []string
	Mandatory   []string
	Port        int               // where the host keys are read from; 22 if 0
	Timeout     time.Duration     // per host key; 10s if 0
	Systems     map[string]string // plan → system beyond PlanSystem's own
}

// Machine is one line of a Nix machines file.
type Machine struct {
	DeviceID    string   `json:"device_id"`
	Hostname    string   `json:"hostname"`
	URI         string   `json:"uri"` // ssh://USER@ADDR
	Systems     []string `json:"systems"`
	SSHKey      string   `json:"ssh_key"` // "-" for none
	MaxJobs     int      `json:"max_jobs"`
	SpeedFactor int      `json:"speed_factor"`
	Features    []string `json:"supported_features"`
	Mandatory   []string `json:"mandatory_features"`
	HostKey     string   `json:"host_key"` // "ssh-ed25519 AAAA…"
}

// Line is m as Nix and Hydra read it: URI, systems, identity, max jobs,
// speed factor, supported and mandatory features, base64 of the host key.
func (m Machine) Line() string {
	return strings.Join([]string{
		m.URI,
		strings.Join(m.Systems, ","),
		orDash(m.SSHKey),
		strconv.Itoa(m.MaxJobs),
		strconv.Itoa(m.SpeedFactor),
		orDash(strings.Join(m.Features, ",")),
		orDash(strings.Join(m.Mandatory, ",")),
		base64.StdEncoding.EncodeToString([]byte(m.HostKey)),
	}, " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Builders picks the devices that belong in the machines file: active,
// with o.Tag, without o.SkipTag.
func Builders(devs []Device, tag, skipTag string) []Device {
	var out []Device
	for _, d := range devs {
		if !d.Active() || (tag != "" && !d.HasTag(tag)) || (skipTag != "" && d.HasTag(skipTag)) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// DeviceError is a builder left out of the machines file, and why.
type DeviceError struct {
	Device Device
	Err    error
}

func (e *DeviceError) Error() string {
	name := e.Device.Hostname
	if name == "" {
		name = e.Device.ID
	}
	return fmt.Sprintf("machines: %s (%s): %v", name, e.Device.ID, e.Err)
}

func (e *DeviceError) Unwrap() error { return e.Err }

// Machines makes the machines file lines for the builders among devs, each
// host key read from the host itself; the result is sorted by line. A
// builder whose line cannot be made is left out and reported in skipped.
func Machines(ctx context.Context, devs []Device, o MachinesOptions) (ms []Machine, skipped []*DeviceError) {
	if o.Port == 0 {
		o.Port = 22
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	builders := Builders(devs, o.Tag, o.SkipTag)
	results := make([]*Machine, len(builders))
	errs := make([]error, len(builders))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, d := range builders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], errs[i] = machine(ctx, d, o)
		}()
	}
	wg.Wait()
	for i, m := range results {
		if errs[i] != nil {
			skipped = append(skipped, &DeviceError{Device: builders[i], Err: errs[i]})
			continue
		}
		ms = append(ms, *m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Line() < ms[j].Line() })
	return ms, skipped
}

func machine(ctx context.Context, d Device, o MachinesOptions) (*Machine, error) {
	system, err := PlanSystem(d.Plan, o.Systems)
	if err != nil {
		return nil, err
	}
	if d.PublicIPv4 == "" {
		return nil, errors.New("no public IPv4 address")
	}
	key, err := HostKey(ctx, net.JoinHostPort(d.PublicIPv4, strconv.Itoa(o.Port)), o.Timeout)
	if err != nil {
		return nil, err
	}
	return &Machine{
		DeviceID:    d.ID,
		Hostname:    d.Hostname,
		URI:         "ssh://" + o.User + "@" + d.PublicIPv4,
		Systems:     []string{system},
		SSHKey:      orDash(o.SSHKey),
		MaxJobs:     o.MaxJobs,
		SpeedFactor: o.SpeedFactor,
		Features:    nonNil(o.Features),
		Mandatory:   nonNil(o.Mandatory),
		HostKey:     AuthorizedKey(key),
	}, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// AuthorizedKey is k as one line without the newline: "ssh-ed25519 AAAA…".
func AuthorizedKey(k ssh.PublicKey) string {
	return string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(k)))
}

// hostKeyAlgorithms puts ed25519 first: the server uses the first one it
// has, so hosts with an ed25519 key present that one.
var hostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

var errKeyRead = errors.New("host key read; not logging in")

// HostKey starts an SSH handshake with addr (host:port) and returns the
// host key the server presents, ed25519 if it has one. The key exchange has
// proved by then that the server holds the key; the handshake is abandoned
// before any authentication, and the key is not written anywhere.
func HostKey(ctx context.Context, addr string, timeout time.Duration) (ssh.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}

	var mu sync.Mutex
	var key ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User:              "nbship",
		HostKeyAlgorithms: hostKeyAlgorithms,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			mu.Lock()
			key = k
			mu.Unlock()
			return errKeyRead
		},
	}
	c, _, _, err := ssh.NewClientConn(conn, addr, cfg)
	if c != nil {
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if key != nil {
		return key, nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("ssh: %s: no host key within %s", addr, timeout)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("ssh: %s: %w", addr, ctx.Err())
	}
	if err == nil {
		err = errors.New("handshake ended without a host key")
	}
	return nil, fmt.Errorf("ssh: %s: %w", addr, err)
}
