package main

// Flags and helpers shared by the commands that reach hosts over SSH.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/version"
	"github.com/nbship/nbship/remote"
)

// sshFlags are the SSH settings every remote command takes.
type sshFlags struct {
	knownHosts   []string
	acceptNew    bool
	sshConfig    string
	identities   []string
	remoteNbship string
}

func (f *sshFlags) add(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.knownHosts, "known-hosts", nil, "known_hosts `FILE` to check host keys against (default ~/.ssh/known_hosts; repeatable)")
	fs.BoolVar(&f.acceptNew, "accept-new", false, "add unknown host keys to known_hosts, like StrictHostKeyChecking=accept-new (a changed key is always refused)")
	fs.StringVar(&f.sshConfig, "ssh-config", "", "ssh config `FILE` (default ~/.ssh/config)")
	fs.StringArrayVarP(&f.identities, "identity", "i", nil, "identity `FILE` to offer first (repeatable)")
	fs.StringVar(&f.remoteNbship, "remote-nbship", "", "use the nbship at this `PATH` on the hosts instead of uploading one")
}

func (f *sshFlags) config(e *env) remote.Config {
	return remote.Config{
		Home:          e.getenv("HOME"),
		SSHConfig:     f.sshConfig,
		KnownHosts:    f.knownHosts,
		AcceptNew:     f.acceptNew,
		IdentityFiles: f.identities,
		Log:           e.stderr,
	}
}

// dialAll connects to every destination at once; on any failure it closes
// those that connected and returns the first error (host key problems are
// reported before any command runs on any host).
func dialAll(ctx context.Context, rc remote.Config, dests ...string) ([]*remote.Client, error) {
	type res struct {
		i   int
		c   *remote.Client
		err error
	}
	ch := make(chan res, len(dests))
	for i, d := range dests {
		go func() {
			c, err := remote.Dial(ctx, d, rc)
			ch <- res{i, c, err}
		}()
	}
	clients := make([]*remote.Client, len(dests))
	var first error
	for range dests {
		r := <-ch
		clients[r.i] = r.c
		if r.err != nil && first == nil {
			first = r.err
		}
	}
	if first != nil {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
		var hk *remote.HostKeyError
		if errors.As(first, &hk) {
			return nil, first
		}
		return nil, withHint(first, "check that the host is up and that `ssh %s` works from this machine", dests[0])
	}
	return clients, nil
}

// install puts this nbship on host (or finds it there) and starts it as
// the host's agent, so that every later step on the host goes through one
// session (see remote.Client.UseAgent). NBSHIP_NO_AGENT=1 (not
// documented; for benchmarks) runs each step in a session of its own.
func (f *sshFlags) install(ctx context.Context, host *remote.Client) (string, error) {
	agent := os.Getenv("NBSHIP_NO_AGENT") != "1"
	bin, err := host.InstallNbship(ctx, remote.InstallOptions{
		Version:  version.Version,
		Override: f.remoteNbship,
		Binary:   localBinary,
		Agent:    agent,
	})
	if err != nil || !agent {
		return bin, err
	}
	return bin, host.UseAgent(ctx, bin)
}

// localBinary finds the linux nbship binary for goarch: this executable when
// it is that architecture, else nbship-linux-GOARCH beside it or in
// $NBSHIP_DIST (make build puts both in dist/).
func localBinary(goarch string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if runtime.GOOS == "linux" && runtime.GOARCH == goarch {
		return self, nil
	}
	name := "nbship-linux-" + goarch
	dirs := []string{filepath.Dir(self)}
	if d := os.Getenv("NBSHIP_DIST"); d != "" {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("no %s beside %s; run 'make build' and use dist/, set NBSHIP_DIST, or pass --remote-nbship", name, self)
}

// loadConfig reads --config and insists on keys.
func loadConfig(path string, keys ...string) (*config.Config, error) {
	if path == "" {
		return nil, usageError("--config FILE is required (the builders.conf the old scripts read)")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if err := cfg.Require(keys...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// installAll puts nbship on the hosts at once and returns each one's path.
func installAll(ctx context.Context, sf *sshFlags, hosts ...*remote.Client) ([]string, error) {
	paths := make([]string, len(hosts))
	errs := make([]error, len(hosts))
	done := make(chan struct{})
	for i, h := range hosts {
		go func() {
			defer func() { done <- struct{}{} }()
			paths[i], errs[i] = sf.install(ctx, h)
		}()
	}
	for range hosts {
		<-done
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return paths, nil
}
