package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nbship/nbship/internal/tail"
)

const (
	defaultKeepAlive      = 15 * time.Second
	defaultConnectTimeout = 10 * time.Second
	defaultAliveCountMax  = 3
	maxJumps              = 8
)

// target is one host to connect to, with everything the ssh config says
// about it resolved.
type target struct {
	dest          string // as given, for messages
	alias         string // host part of dest: what Host patterns match
	hostname      string // HostName, or alias
	port          int
	user          string
	identityFiles []string // from the config (or the defaults), expanded
	namedIDs      bool     // the config names IdentityFiles or says IdentitiesOnly
	proxyJump     []string
	proxyCommand  string   // "" = none; tokens not yet expanded
	knownHosts    []string // user known_hosts files; the first one is written by AcceptNew
	globalKnown   []string
	hostKeyAlias  string
	acceptNew     bool   // StrictHostKeyChecking accept-new (or no)
	hashKnown     bool   // HashKnownHosts: AcceptNew writes the name hashed
	agentSocket   string // "" = no agent

	hostKeyAlgorithms string // HostKeyAlgorithms, comma-separated

	connectTimeout time.Duration
	keepAlive      time.Duration
	aliveCountMax  int
}

// addr is host:port for dialing.
func (t *target) addr() string {
	return net.JoinHostPort(t.hostname, strconv.Itoa(t.port))
}

// keyName is the name known_hosts knows this host by, as OpenSSH looks
// it up: the HostKeyAlias as it is, else the host name, as [host]:port
// when the port is not 22.
func (t *target) keyName() string {
	if t.hostKeyAlias != "" {
		return t.hostKeyAlias
	}
	if t.port == 22 {
		return t.hostname
	}
	return "[" + t.hostname + "]:" + strconv.Itoa(t.port)
}

// settings is how to resolve destinations: the caller's Config, and
// whether OpenSSH's own `ssh -G` answers or the built-in parser does.
type settings struct {
	cfg       Config
	home      string
	pwHome    string // the home directory of the password database (what ssh's ~ means)
	localUser string
	file      string          // the ssh config file ("" = none), for messages and -F
	passF     bool            // pass -F file to ssh -G
	sshBin    string          // "" = use the built-in parser
	noExec    bool            // Match exec never runs and never matches (fuzzing)
	ctx       context.Context // Dial's: cancels a hanging ssh -G; nil = none
}

func loadSettings(cfg Config) (*settings, error) {
	s := &settings{cfg: cfg, home: cfg.Home}
	if s.home == "" {
		s.home = os.Getenv("HOME")
	}
	if s.home == "" {
		return nil, errors.New("ssh: no home directory: $HOME is not set")
	}
	s.localUser = localUserName()
	if u, err := user.Current(); err == nil {
		s.pwHome = u.HomeDir
	}
	s.file = cfg.SSHConfig
	if s.file == "" {
		s.file = filepath.Join(s.home, ".ssh", "config")
	}
	// ssh reads ~/.ssh/config of the password database's home and then
	// /etc/ssh/ssh_config; -F is needed only when that is not the file
	// meant here.
	s.passF = cfg.SSHConfig != "" || filepath.Clean(s.home) != filepath.Clean(s.pwHome)
	if _, err := os.Stat(s.file); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("ssh: reading config: %w", err)
		}
		if cfg.SSHConfig != "" {
			return nil, fmt.Errorf("ssh: config file %s: %w", s.file, err)
		}
		s.file = ""
	}
	if !cfg.BuiltinSSHConfig {
		if p, err := exec.LookPath("ssh"); err == nil {
			s.sshBin = p
		}
	}
	return s, nil
}

func localUserName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return os.Getenv("LOGNAME")
}

// parseDest splits [ssh://][user@]host[:port]; host may be [v6]:port.
func parseDest(dest string) (userName, host string, port int, err error) {
	d := strings.TrimPrefix(dest, "ssh://")
	if i := strings.LastIndexByte(d, '@'); i >= 0 {
		userName, d = d[:i], d[i+1:]
		if userName == "" {
			return "", "", 0, fmt.Errorf("ssh: %q: empty user name", dest)
		}
	}
	host = d
	portStr := ""
	switch {
	case strings.HasPrefix(d, "["):
		end := strings.IndexByte(d, ']')
		if end < 0 {
			return "", "", 0, fmt.Errorf("ssh: %q: missing ]", dest)
		}
		host = d[1:end]
		rest := d[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return "", "", 0, fmt.Errorf("ssh: %q: unexpected %q after ]", dest, rest)
			}
			portStr = rest[1:]
		}
	case strings.Count(d, ":") == 1:
		i := strings.IndexByte(d, ':')
		host, portStr = d[:i], d[i+1:]
	}
	if host == "" {
		return "", "", 0, fmt.Errorf("ssh: %q: no host name", dest)
	}
	if strings.ContainsAny(host, " \t\n/") || strings.HasPrefix(host, "-") {
		return "", "", 0, fmt.Errorf("ssh: %q: invalid host name", dest)
	}
	if portStr != "" {
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 1 || p > 65535 {
			return "", "", 0, fmt.Errorf("ssh: %q: invalid port %q", dest, portStr)
		}
		port = p
	}
	return userName, host, port, nil
}

// resolve works out everything about dest from the destination syntax,
// the ssh config and the caller's Config.
func (s *settings) resolve(dest string) (*target, error) {
	destUser, alias, destPort, err := parseDest(dest)
	if err != nil {
		return nil, err
	}
	var r *resolved
	if s.sshBin != "" {
		r, err = s.sshG(alias, destUser, destPort)
	} else {
		r, err = s.builtin(alias, destUser, destPort)
	}
	if err != nil {
		return nil, err
	}
	return s.target(dest, alias, r)
}

// sshG asks OpenSSH what it would use for host: `ssh -G`.
func (s *settings) sshG(host, cliUser string, cliPort int) (*resolved, error) {
	args := []string{"-G"}
	if s.passF {
		f := s.file
		if f == "" {
			f = os.DevNull
		}
		args = append(args, "-F", f)
	}
	if cliPort != 0 {
		args = append(args, "-p", strconv.Itoa(cliPort))
	}
	if cliUser != "" {
		args = append(args, "-l", cliUser)
	}
	args = append(args, "--", host)
	ctx := s.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	cmd := exec.CommandContext(ctx, s.sshBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && ctx.Err() == nil && notOpenSSH(stderr.String()) {
		// An ssh without -G (not OpenSSH, or older than 6.8).
		return s.builtin(host, cliUser, cliPort)
	}
	if err != nil && ctx.Err() != nil {
		// Cancelled or out of time while ssh -G ran: say so, not "killed".
		return nil, fmt.Errorf("ssh: %s: ssh -G %s: %w", host, host, ctx.Err())
	}
	if err != nil {
		// ssh names the bad line first, then says it is terminating.
		var msgs []string
		for l := range strings.SplitSeq(stderr.String(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.Contains(l, "terminating, ") && !strings.HasPrefix(l, "Pseudo-terminal") {
				msgs = append(msgs, l)
			}
		}
		msg := tail.Reason(strings.Join(msgs, "; "))
		if msg == "" {
			msg = tail.Reason(stderr.String())
		}
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("ssh: %s: ssh -G %s: %s", host, host, msg)
	}
	r := &resolved{}
	var uk, gk string
	for line := range strings.SplitSeq(string(out), "\n") {
		key, val, _ := strings.Cut(line, " ")
		switch key {
		case "hostname":
			r.hostname = val
		case "user":
			r.user = val
		case "port":
			r.port, _ = strconv.Atoi(val)
		case "identityfile":
			r.identityFiles = append(r.identityFiles, val)
		case "identitiesonly":
			r.identitiesOnly = val == "yes"
		case "proxyjump":
			if !strings.EqualFold(val, "none") {
				r.proxyJump = val
			}
		case "proxycommand":
			if !strings.EqualFold(val, "none") {
				r.proxyCommand = val
			}
		case "userknownhostsfile":
			uk = val
		case "globalknownhostsfile":
			gk = val
		case "hostkeyalias":
			r.hostKeyAlias = val
		case "stricthostkeychecking":
			r.strictHostKeys = val
		case "connecttimeout":
			if val != "none" {
				r.connectTimeout, _ = strconv.Atoi(val)
			}
		case "serveraliveinterval":
			r.aliveInterval, _ = strconv.Atoi(val)
		case "serveralivecountmax":
			r.aliveCountMax, _ = strconv.Atoi(val)
		case "hostkeyalgorithms":
			r.hostKeyAlgorithms = val
		case "identityagent":
			r.identityAgent = val
		case "hashknownhosts":
			r.hashKnownHosts = val == "yes"
		}
	}
	if r.hostname == "" || r.port == 0 {
		return nil, fmt.Errorf("ssh: %s: ssh -G printed no hostname or port", host)
	}
	// ssh -G prints the known_hosts files on one line, separated by
	// blanks, and a file name may hold blanks itself: take the split of
	// the built-in parser when it agrees, else start a file at each
	// absolute path.
	var builtin *resolved
	if strings.Contains(uk+gk, " ") {
		builtin, _ = s.builtin(host, cliUser, cliPort)
	}
	r.userKnownHosts = s.splitFiles(uk, builtin, func(b *resolved) []string { return b.userKnownHosts })
	r.globalKnownHosts = s.splitFiles(gk, builtin, func(b *resolved) []string { return b.globalKnownHosts })
	return r, nil
}

// notOpenSSH tells from ssh's complaint that it does not know -G.
func notOpenSSH(stderr string) bool {
	for _, w := range []string{"unknown option", "illegal option", "invalid option", "unrecognized option"} {
		if strings.Contains(stderr, w) {
			return true
		}
	}
	return false
}

func (s *settings) splitFiles(line string, builtin *resolved, get func(*resolved) []string) []string {
	line = s.fromPwHome(line)
	if line == "" {
		return nil
	}
	if builtin != nil && strings.Join(get(builtin), " ") == line {
		return get(builtin)
	}
	var files []string
	for _, f := range strings.Split(line, " ") {
		if len(files) > 0 && !strings.HasPrefix(f, "/") {
			files[len(files)-1] += " " + f
			continue
		}
		files = append(files, f)
	}
	return files
}

// fromPwHome rewrites paths under the password database's home (where
// ssh's ~ and %d point) to be under Config.Home, when the two differ.
func (s *settings) fromPwHome(line string) string {
	if s.pwHome == "" || filepath.Clean(s.pwHome) == filepath.Clean(s.home) {
		return line
	}
	old := strings.TrimSuffix(s.pwHome, "/") + "/"
	fields := strings.Split(line, " ")
	for i, f := range fields {
		if strings.HasPrefix(f, old) {
			fields[i] = filepath.Join(s.home, f[len(old):])
		}
	}
	return strings.Join(fields, " ")
}

// target turns what OpenSSH resolved into what Dial uses, applying the
// caller's Config over it.
func (s *settings) target(dest, hostArg string, r *resolved) (*target, error) {
	t := &target{
		dest: dest, alias: hostArg, hostname: r.hostname, port: r.port, user: r.user,
		proxyCommand: r.proxyCommand, hostKeyAlias: r.hostKeyAlias,
	}
	if t.user == "" {
		return nil, fmt.Errorf("ssh: %s: no user name: give user@host or set User in %s", dest, s.fileName())
	}
	alias := r.hostKeyAlias
	if alias == "" {
		alias = hostArg
	}
	tokens := s.tokens(r.hostname, hostArg, alias, r.user, r.port)

	t.namedIDs = r.identitiesOnly || !slices.Equal(r.identityFiles, defaultIdentityFiles)
	for _, id := range r.identityFiles {
		if strings.EqualFold(id, "none") {
			continue
		}
		p, err := s.expandPath(id, tokens)
		if err != nil {
			return nil, fmt.Errorf("ssh: %s: IdentityFile %q: %w", s.fileName(), id, err)
		}
		t.identityFiles = append(t.identityFiles, p)
	}

	if r.proxyJump != "" {
		for hop := range strings.SplitSeq(r.proxyJump, ",") {
			hop = strings.TrimSpace(hop)
			if hop == "" {
				return nil, fmt.Errorf("ssh: %s: Host %s: invalid ProxyJump %q", s.fileName(), hostArg, r.proxyJump)
			}
			t.proxyJump = append(t.proxyJump, hop)
		}
	}

	if len(s.cfg.KnownHosts) > 0 {
		t.knownHosts = s.cfg.KnownHosts
	} else {
		for _, f := range r.userKnownHosts {
			if strings.EqualFold(f, "none") {
				f = os.DevNull
			}
			t.knownHosts = append(t.knownHosts, f)
		}
		for _, f := range r.globalKnownHosts {
			if !strings.EqualFold(f, "none") {
				t.globalKnown = append(t.globalKnown, f)
			}
		}
	}
	if len(t.knownHosts) == 0 {
		t.knownHosts = []string{filepath.Join(s.home, ".ssh", "known_hosts")}
	}
	switch r.strictHostKeys {
	case "accept-new", "false", "no", "off":
		// "no" would also let OpenSSH connect to a host whose key
		// changed; nbship never does, so it means accept-new here.
		t.acceptNew = true
	}
	t.hostKeyAlgorithms = r.hostKeyAlgorithms
	t.hashKnown = r.hashKnownHosts

	t.agentSocket = os.Getenv("SSH_AUTH_SOCK")
	switch a := r.identityAgent; {
	case a == "":
	case strings.EqualFold(a, "none"):
		t.agentSocket = ""
	case a == "SSH_AUTH_SOCK":
	case strings.HasPrefix(a, "$"):
		t.agentSocket = os.Getenv(a[1:])
	default:
		p, err := s.expandPath(s.fromPwHome(a), tokens)
		if err != nil {
			return nil, fmt.Errorf("ssh: %s: IdentityAgent %q: %w", s.fileName(), a, err)
		}
		t.agentSocket = p
	}

	t.connectTimeout = s.cfg.ConnectTimeout
	if t.connectTimeout <= 0 {
		t.connectTimeout = defaultConnectTimeout
		if r.connectTimeout > 0 {
			t.connectTimeout = time.Duration(r.connectTimeout) * time.Second
		}
	}
	t.keepAlive = s.cfg.KeepAlive
	if t.keepAlive <= 0 {
		t.keepAlive = defaultKeepAlive
		// 0 turns keepalives off in OpenSSH; here they always run,
		// so a dead connection can never hang a build.
		if r.aliveInterval > 0 {
			t.keepAlive = time.Duration(r.aliveInterval) * time.Second
		}
	}
	t.aliveCountMax = defaultAliveCountMax
	if r.aliveCountMax > 0 {
		t.aliveCountMax = r.aliveCountMax
	}
	return t, nil
}

func (s *settings) fileName() string {
	if s.file == "" {
		return "the ssh config"
	}
	return s.file
}
