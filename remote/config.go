package remote

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
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
	knownHosts    []string // user known_hosts files; the first one is written by AcceptNew
	globalKnown   []string
	hostKeyAlias  string
	agentSocket   string // "" = no agent

	connectTimeout time.Duration
	keepAlive      time.Duration
	aliveCountMax  int
}

// addr is host:port for dialing.
func (t *target) addr() string {
	return net.JoinHostPort(t.hostname, strconv.Itoa(t.port))
}

// keyAddr is host:port as known_hosts knows this host. A HostKeyAlias is
// used as it is, without the port (as OpenSSH does); it may be written
// [host]:port itself.
func (t *target) keyAddr() string {
	if a := t.hostKeyAlias; a != "" {
		if _, _, err := net.SplitHostPort(a); err == nil {
			return a
		}
		return net.JoinHostPort(a, "22")
	}
	return net.JoinHostPort(t.hostname, strconv.Itoa(t.port))
}

// settings is the parsed ssh config plus the caller's Config.
type settings struct {
	cfg       Config
	home      string
	localUser string
	file      string             // the ssh config file, for messages
	ssh       *ssh_config.Config // nil if there is no file
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
	s.file = cfg.SSHConfig
	if s.file == "" {
		s.file = filepath.Join(s.home, ".ssh", "config")
	}
	b, err := os.ReadFile(s.file)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ssh: reading config: %w", err)
	}
	s.ssh, err = ssh_config.DecodeBytes(absIncludes(b, s.home))
	if err != nil {
		return nil, fmt.Errorf("ssh: %s: %w", s.file, err)
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

var includeLine = regexp.MustCompile(`(?im)^([ \t]*include(?:[ \t]*=[ \t]*|[ \t]+))(.*)$`)

// absIncludes rewrites relative Include paths of the top-level config so
// they name files under home/.ssh. ssh_config resolves them against the
// home directory of the password database, which is not ours when HOME
// was changed (as in tests); Includes inside included files still are.
func absIncludes(b []byte, home string) []byte {
	return includeLine.ReplaceAllFunc(b, func(line []byte) []byte {
		m := includeLine.FindSubmatch(line)
		words := strings.Fields(string(m[2]))
		for i, w := range words {
			if strings.HasPrefix(w, "#") {
				break
			}
			switch {
			case strings.HasPrefix(w, "~/"):
				words[i] = filepath.Join(home, w[2:])
			case !filepath.IsAbs(w):
				words[i] = filepath.Join(home, ".ssh", w)
			}
		}
		return append(append([]byte(nil), m[1]...), strings.Join(words, " ")...)
	})
}

func (s *settings) get(alias, key string) string {
	if s.ssh == nil {
		return ""
	}
	v, err := s.ssh.Get(alias, key)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(v)
}

func (s *settings) getAll(alias, key string) []string {
	if s.ssh == nil {
		return nil
	}
	v, err := s.ssh.GetAll(alias, key)
	if err != nil {
		return nil
	}
	return v
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
	t := &target{dest: dest, alias: alias}

	t.hostname = alias
	if h := s.get(alias, "HostName"); h != "" {
		t.hostname = strings.ReplaceAll(strings.ReplaceAll(h, "%h", alias), "%%", "%")
	}

	t.port = 22
	if destPort != 0 {
		t.port = destPort
	} else if p := s.get(alias, "Port"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, s.badValue(alias, "Port", p)
		}
		t.port = n
	}

	t.user = s.localUser
	if destUser != "" {
		t.user = destUser
	} else if u := s.get(alias, "User"); u != "" {
		t.user = u
	}
	if t.user == "" {
		return nil, fmt.Errorf("ssh: %s: no user name: give user@host or set User in %s", dest, s.file)
	}

	tokens := map[byte]string{
		'd': s.home, 'u': s.localUser, 'h': t.hostname, 'r': t.user,
		'p': strconv.Itoa(t.port), 'n': alias, '%': "%",
	}
	if hn, err := os.Hostname(); err == nil {
		tokens['l'] = hn
	}

	ids := s.getAll(alias, "IdentityFile")
	only, err := s.yesNo(alias, "IdentitiesOnly")
	if err != nil {
		return nil, err
	}
	t.namedIDs = len(ids) > 0 || only
	if len(ids) == 0 {
		ids = []string{"~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"}
	}
	for _, id := range ids {
		if strings.EqualFold(id, "none") {
			continue
		}
		p, err := s.expandPath(id, tokens)
		if err != nil {
			return nil, fmt.Errorf("ssh: %s: IdentityFile %q: %w", s.file, id, err)
		}
		t.identityFiles = append(t.identityFiles, p)
	}

	if pj := s.get(alias, "ProxyJump"); pj != "" && !strings.EqualFold(pj, "none") {
		for hop := range strings.SplitSeq(pj, ",") {
			hop = strings.TrimSpace(hop)
			if hop == "" {
				return nil, s.badValue(alias, "ProxyJump", pj)
			}
			t.proxyJump = append(t.proxyJump, hop)
		}
	}

	t.hostKeyAlias = s.get(alias, "HostKeyAlias")

	switch {
	case len(s.cfg.KnownHosts) > 0:
		t.knownHosts = s.cfg.KnownHosts
	case s.get(alias, "UserKnownHostsFile") != "":
		for f := range strings.FieldsSeq(s.get(alias, "UserKnownHostsFile")) {
			if strings.EqualFold(f, "none") {
				f = os.DevNull
			}
			p, err := s.expandPath(f, tokens)
			if err != nil {
				return nil, fmt.Errorf("ssh: %s: UserKnownHostsFile %q: %w", s.file, f, err)
			}
			t.knownHosts = append(t.knownHosts, p)
		}
	default:
		t.knownHosts = []string{filepath.Join(s.home, ".ssh", "known_hosts")}
	}
	if len(s.cfg.KnownHosts) == 0 {
		g := s.get(alias, "GlobalKnownHostsFile")
		if g == "" {
			g = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
		}
		for f := range strings.FieldsSeq(g) {
			if !strings.EqualFold(f, "none") {
				t.globalKnown = append(t.globalKnown, f)
			}
		}
	}

	t.agentSocket = os.Getenv("SSH_AUTH_SOCK")
	if a := s.get(alias, "IdentityAgent"); a != "" {
		switch {
		case strings.EqualFold(a, "none"):
			t.agentSocket = ""
		case a == "SSH_AUTH_SOCK":
		case strings.HasPrefix(a, "$"):
			t.agentSocket = os.Getenv(a[1:])
		default:
			p, err := s.expandPath(a, tokens)
			if err != nil {
				return nil, fmt.Errorf("ssh: %s: IdentityAgent %q: %w", s.file, a, err)
			}
			t.agentSocket = p
		}
	}

	t.connectTimeout = s.cfg.ConnectTimeout
	if t.connectTimeout <= 0 {
		t.connectTimeout = defaultConnectTimeout
		if v := s.get(alias, "ConnectTimeout"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, s.badValue(alias, "ConnectTimeout", v)
			}
			if n > 0 {
				t.connectTimeout = time.Duration(n) * time.Second
			}
		}
	}
	t.keepAlive = s.cfg.KeepAlive
	if t.keepAlive <= 0 {
		t.keepAlive = defaultKeepAlive
		if v := s.get(alias, "ServerAliveInterval"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, s.badValue(alias, "ServerAliveInterval", v)
			}
			// 0 turns keepalives off in OpenSSH; here they always run,
			// so a dead connection can never hang a build.
			if n > 0 {
				t.keepAlive = time.Duration(n) * time.Second
			}
		}
	}
	t.aliveCountMax = defaultAliveCountMax
	if v := s.get(alias, "ServerAliveCountMax"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, s.badValue(alias, "ServerAliveCountMax", v)
		}
		t.aliveCountMax = n
	}
	return t, nil
}

func (s *settings) badValue(alias, key, value string) error {
	return fmt.Errorf("ssh: %s: Host %s: invalid %s %q", s.file, alias, key, value)
}

func (s *settings) yesNo(alias, key string) (bool, error) {
	switch v := strings.ToLower(s.get(alias, key)); v {
	case "", "no":
		return false, nil
	case "yes":
		return true, nil
	default:
		return false, s.badValue(alias, key, v)
	}
}

// expandPath expands a leading ~ and the % tokens of ssh_config(5).
func (s *settings) expandPath(p string, tokens map[byte]string) (string, error) {
	if p == "~" {
		p = s.home
	} else if strings.HasPrefix(p, "~/") {
		p = filepath.Join(s.home, p[2:])
	}
	if !strings.Contains(p, "%") {
		return p, nil
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+1 == len(p) {
			return "", errors.New("% at the end")
		}
		i++
		v, ok := tokens[p[i]]
		if !ok {
			return "", fmt.Errorf("unknown token %%%c", p[i])
		}
		b.WriteString(v)
	}
	return b.String(), nil
}
