package remote

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// resolved is what OpenSSH settles on for one destination: the fields of
// `ssh -G` that nbship uses, in the form ssh -G prints them (IdentityFile
// not yet expanded, the known_hosts files expanded).
type resolved struct {
	hostname          string
	user              string
	port              int
	identityFiles     []string
	identitiesOnly    bool
	proxyJump         string // "" = none
	proxyCommand      string // "" = none
	userKnownHosts    []string
	globalKnownHosts  []string
	hostKeyAlias      string
	strictHostKeys    string // yes, no, ask, accept-new (as ssh -G prints: "true"/"false" too)
	connectTimeout    int    // seconds, 0 = none
	aliveInterval     int
	aliveCountMax     int
	hostKeyAlgorithms string // "" = default
	identityAgent     string
	hashKnownHosts    bool
}

// defaultIdentityFiles are OpenSSH's, in its order.
var defaultIdentityFiles = []string{
	"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
	"~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa",
}

// defaultHostKeyAlgorithms is OpenSSH 9.2's HostKeyAlgorithms default.
const defaultHostKeyAlgorithms = "ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256-cert-v01@openssh.com," +
	"ecdsa-sha2-nistp384-cert-v01@openssh.com,ecdsa-sha2-nistp521-cert-v01@openssh.com," +
	"sk-ssh-ed25519-cert-v01@openssh.com,sk-ecdsa-sha2-nistp256-cert-v01@openssh.com," +
	"rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com," +
	"ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521," +
	"sk-ssh-ed25519@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256"

const maxIncludeDepth = 16

// sshKeywords are the keywords OpenSSH accepts (some only to warn that
// they are deprecated): those of 9.2, and the few added since, so that a
// config written for a newer ssh still reads; any other is an error
// unless IgnoreUnknown names it.
var sshKeywords = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range strings.Fields(`addkeystoagent addressfamily afstokenpassing batchmode bindaddress bindinterface
canonicaldomains canonicalizefallbacklocal canonicalizehostname canonicalizemaxdots
canonicalizepermittedcnames casignaturealgorithms certificatefile
challengeresponseauthentication checkhostip cipher ciphers clearallforwardings compression
compressionlevel connectionattempts connecttimeout controlmaster controlpath
controlpersist dsaauthentication dynamicforward enableescapecommandline enablesshkeysign
escapechar exitonforwardfailure fallbacktorsh fingerprinthash forkafterauthentication
forwardagent forwardx11 forwardx11timeout forwardx11trusted gatewayports
globalknownhostsfile globalknownhostsfile2 gssapiauthentication gssapidelegatecredentials
hashknownhosts host hostbasedacceptedalgorithms hostbasedauthentication hostbasedkeytypes
hostkeyalgorithms hostkeyalias hostname identitiesonly identityagent identityfile
identityfile2 ignoreunknown include ipqos kbdinteractiveauthentication
kbdinteractivedevices keepalive kerberosauthentication kerberostgtpassing kexalgorithms
knownhostscommand localcommand localforward loglevel logverbose macs match
nohostauthenticationforlocalhost numberofpasswordprompts passwordauthentication
permitlocalcommand permitremoteopen pkcs11provider port preferredauthentications protocol
proxycommand proxyjump proxyusefdpass pubkeyacceptedalgorithms pubkeyacceptedkeytypes
pubkeyauthentication rekeylimit remotecommand remoteforward requesttty requiredrsasize
revokedhostkeys rhostsauthentication rhostsrsaauthentication rsaauthentication
securitykeyprovider sendenv serveralivecountmax serveraliveinterval sessiontype setenv
skeyauthentication smartcarddevice stdinnull streamlocalbindmask streamlocalbindunlink
stricthostkeychecking syslogfacility tcpkeepalive tisauthentication tunnel tunneldevice
updatehostkeys useprivilegedport user userknownhostsfile userknownhostsfile2 useroaming
usersh verifyhostkeydns visualhostkey xauthlocation`) {
		m[k] = true
	}
	for _, k := range strings.Fields("channeltimeout obscurekeystroketiming refuseconnection tag versionaddendum warnweakcrypto") {
		m[k] = true
	}
	return m
}()

// confEval is one evaluation of an ssh config for one destination, as
// ssh(1)'s readconf.c does it: first value wins, Host and Match blocks,
// Include, and a second ("final") pass when a Match final asks for one.
type confEval struct {
	s        *settings
	hostArg  string // the host as given (what Host matches in the first pass, %n)
	host     string // what Host matches: hostArg, or the HostName in the final pass
	final    bool
	wantFin  bool
	opts     map[string]string   // single-valued options, first wins
	ids      []string            // IdentityFile, in order
	khUser   []string            // UserKnownHostsFile
	khGlobal []string            // GlobalKnownHostsFile
	seen     map[string]struct{} // keywords set
}

// builtin resolves a destination with nbship's own reading of the ssh
// config, for machines without OpenSSH.
func (s *settings) builtin(hostArg, cliUser string, cliPort int) (*resolved, error) {
	e := &confEval{s: s, hostArg: hostArg, host: hostArg, opts: map[string]string{}, seen: map[string]struct{}{}}
	if cliUser != "" {
		e.opts["user"] = cliUser
	}
	if cliPort != 0 {
		e.opts["port"] = strconv.Itoa(cliPort)
	}
	if err := e.readTop(); err != nil {
		return nil, err
	}
	if v := strings.ToLower(e.opts["canonicalizehostname"]); v == "yes" || v == "always" {
		e.wantFin = true
	}
	if e.wantFin {
		h, err := e.hostname()
		if err != nil {
			return nil, err
		}
		e.host, e.final = h, true
		e.opts["hostname"] = h
		if err := e.readTop(); err != nil {
			return nil, err
		}
	}
	return e.result()
}

// systemConfig is read after the user's, unless a config file was named
// (as ssh -F does).
const systemConfig = "/etc/ssh/ssh_config"

func (e *confEval) readTop() error {
	type top struct{ file, base string }
	var files []top
	if e.s.file != "" {
		files = append(files, top{e.s.file, filepath.Join(e.s.home, ".ssh")})
	}
	if !e.s.passF {
		files = append(files, top{systemConfig, filepath.Dir(systemConfig)})
	}
	for _, f := range files {
		active := true
		err := e.readFile(f.file, f.base, 0, &active, false)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// hostname is HostName with %h expanded, or the host as given.
func (e *confEval) hostname() (string, error) {
	h, ok := e.opts["hostname"]
	if !ok {
		return e.hostArg, nil
	}
	if e.final {
		return h, nil
	}
	return percentExpand(h, map[byte]string{'h': e.hostArg})
}

// readFile reads one config file; base is where relative Includes are.
func (e *confEval) readFile(path, base string, depth int, active *bool, neverMatch bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		if err := e.line(path, base, n, sc.Text(), depth, active, neverMatch); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("ssh: %s: %w", path, err)
	}
	return nil
}

// splitKeyword splits a config line into its keyword (lowercased) and
// the rest, as readconf.c's strdelim does: "Key value", "Key=value",
// "Key = value".
func splitKeyword(line string) (key, rest string) {
	line = strings.TrimRight(line, " \t\r\n\f")
	line = strings.TrimLeft(line, " \t")
	i := strings.IndexAny(line, " \t=")
	if i < 0 {
		return strings.ToLower(line), ""
	}
	key, rest = line[:i], line[i:]
	rest = strings.TrimLeft(rest, " \t")
	if strings.HasPrefix(rest, "=") {
		rest = strings.TrimLeft(rest[1:], " \t")
	}
	return strings.ToLower(key), rest
}

// splitArgs splits arguments as OpenSSH's argv_split does: blanks
// separate, quotes group, a backslash escapes a quote, a backslash or
// (outside quotes) a blank, and a # starting an argument ends the line.
func splitArgs(s string) ([]string, error) {
	var args []string
	i := 0
	for i < len(s) {
		if s[i] == ' ' || s[i] == '\t' {
			i++
			continue
		}
		if s[i] == '#' {
			break
		}
		var b strings.Builder
		var quote byte
		for ; i < len(s); i++ {
			c := s[i]
			switch {
			case c == '\\' && i+1 < len(s) && (s[i+1] == '\'' || s[i+1] == '"' || s[i+1] == '\\' || quote == 0 && s[i+1] == ' '):
				i++
				b.WriteByte(s[i])
				continue
			case quote == 0 && (c == ' ' || c == '\t'):
			case quote == 0 && (c == '"' || c == '\''):
				quote = c
				continue
			case quote != 0 && c == quote:
				quote = 0
				continue
			default:
				b.WriteByte(c)
				continue
			}
			break
		}
		if quote != 0 {
			return nil, errors.New("invalid quotes")
		}
		args = append(args, b.String())
	}
	return args, nil
}

func (e *confEval) line(file, base string, n int, text string, depth int, active *bool, neverMatch bool) error {
	key, rest := splitKeyword(text)
	if key == "" || strings.HasPrefix(key, "#") {
		return nil
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("ssh: %s line %d: %s", file, n, fmt.Sprintf(format, a...))
	}
	if rest == "" {
		return bad("no argument after keyword %q", key)
	}
	args, err := splitArgs(rest)
	if err != nil {
		return bad("%v", err)
	}
	switch key {
	case "host":
		*active = false
		if neverMatch {
			return nil
		}
		for _, a := range args {
			neg := strings.HasPrefix(a, "!")
			if neg {
				a = a[1:]
			}
			if matchPattern(e.host, a) {
				if neg {
					*active = false
					break
				}
				*active = true
			}
		}
		return nil
	case "match":
		ok, err := e.match(args)
		if err != nil {
			return bad("%v", err)
		}
		*active = ok && !neverMatch
		return nil
	case "include":
		for _, a := range args {
			switch {
			case a == "~" || strings.HasPrefix(a, "~/"):
				a = filepath.Join(e.s.home, a[1:])
			case !filepath.IsAbs(a):
				a = filepath.Join(base, a)
			}
			matches, err := filepath.Glob(a)
			if err != nil {
				return bad("include %s: %v", a, err)
			}
			if depth+1 > maxIncludeDepth {
				return bad("too many nested includes")
			}
			was := *active
			for _, m := range matches {
				err := e.readFile(m, base, depth+1, active, neverMatch || !was)
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				*active = was
			}
		}
		return nil
	}
	if !sshKeywords[key] {
		if ig := e.opts["ignoreunknown"]; ig == "" || matchPatternList(key, ig, true) != 1 {
			return bad("bad configuration option: %s", key)
		}
		return nil
	}
	// Values OpenSSH checks in every block, matching or not.
	if key == "port" {
		if p, err := strconv.Atoi(args[0]); err != nil || p < 1 || p > 65535 {
			return bad("bad port %q", args[0])
		}
	}
	if key == "proxyjump" {
		v := rest
		if i := strings.IndexByte(v, '#'); i >= 0 {
			v = strings.TrimRight(v[:i], " \t")
		}
		if !strings.EqualFold(v, "none") {
			for hop := range strings.SplitSeq(v, ",") {
				if _, _, _, err := parseDest(hop); err != nil || hop != strings.TrimSpace(hop) {
					return bad("invalid ProxyJump %q", v)
				}
			}
		}
	}
	if !*active {
		return nil
	}
	switch key {
	case "identityfile":
		if !contains(e.ids, args[0]) { // OpenSSH ignores a duplicate
			e.ids = append(e.ids, args[0])
		}
	case "userknownhostsfile", "globalknownhostsfile":
		list := &e.khUser
		if key == "globalknownhostsfile" {
			list = &e.khGlobal
		}
		if _, set := e.seen[key]; !set {
			*list = append([]string(nil), args...)
		}
	case "proxycommand":
		_, jump := e.opts["proxyjump"]
		if _, set := e.opts["proxycommand"]; !set && !jump {
			e.opts["proxycommand"] = rest
		}
	case "proxyjump":
		_, cmd := e.opts["proxycommand"]
		if _, set := e.opts["proxyjump"]; !set && !cmd {
			v := rest
			if i := strings.IndexByte(v, '#'); i >= 0 {
				v = strings.TrimRight(v[:i], " \t")
			}
			e.opts["proxyjump"] = v
			if !strings.EqualFold(v, "none") {
				e.opts["proxycommand"] = "none"
			}
		}
	default:
		if len(args) > 0 {
			if _, set := e.opts[key]; !set {
				e.opts[key] = args[0]
			}
		}
	}
	e.seen[key] = struct{}{}
	return nil
}

// match evaluates the criteria of a Match line (readconf.c's
// match_cfg_line).
func (e *confEval) match(args []string) (bool, error) {
	result := true
	attrs := 0
	host, err := e.hostname()
	if err != nil {
		return false, err
	}
	user := e.opts["user"]
	if user == "" {
		user = e.s.localUser
	}
	for i := 0; i < len(args); i++ {
		attr := args[i]
		neg := strings.HasPrefix(attr, "!")
		if neg {
			attr = attr[1:]
		}
		lattr := strings.ToLower(attr)
		if lattr == "all" {
			if attrs > 1 || i+1 < len(args) {
				return false, fmt.Errorf("'%s' cannot be combined with other Match attributes", args[i])
			}
			if result {
				result = !neg
			}
			return result, nil
		}
		attrs++
		if lattr == "canonical" || lattr == "final" {
			if lattr == "final" {
				e.wantFin = true
			}
			if e.final == neg {
				result = false
			}
			continue
		}
		if i+1 >= len(args) {
			return false, fmt.Errorf("missing Match criteria for %s", attr)
		}
		i++
		arg := args[i]
		var r bool
		switch lattr {
		case "host":
			r = matchHostname(host, arg)
		case "originalhost":
			r = matchHostname(e.hostArg, arg)
		case "user":
			r = matchPatternList(user, arg, false) == 1
		case "localuser":
			r = matchPatternList(e.s.localUser, arg, false) == 1
		case "exec":
			if !result || e.s.noExec {
				if e.s.noExec && neg == false {
					result = false
				}
				continue // a failed criterion before it: not run
			}
			port := 22
			if p, err := strconv.Atoi(e.opts["port"]); err == nil && p > 0 {
				port = p
			}
			alias := e.opts["hostkeyalias"]
			if alias == "" {
				alias = host
			}
			cmd, err := percentExpand(arg, e.s.tokens(host, e.hostArg, alias, user, port))
			if err != nil {
				return false, err
			}
			r = runMatchExec(cmd)
		default:
			return false, fmt.Errorf("unsupported Match attribute %s", attr)
		}
		if r == neg {
			result = false
		}
	}
	if attrs == 0 {
		return false, errors.New("one or more attributes required for Match")
	}
	return result, nil
}

// runMatchExec runs a Match exec command as ssh does: through the user's
// shell, stdin and stdout on /dev/null, true when it exits 0.
func runMatchExec(cmd string) bool {
	c := exec.Command(userShell(), "-c", cmd)
	c.Stderr = os.Stderr
	return c.Run() == nil
}

func userShell() string {
	if sh := os.Getenv("SHELL"); sh != "" {
		return sh
	}
	return "/bin/sh"
}

// result fills in the defaults, as ssh -G would print them.
func (e *confEval) result() (*resolved, error) {
	r := &resolved{
		identityFiles:     e.ids,
		strictHostKeys:    "ask",
		aliveCountMax:     3,
		hostKeyAlgorithms: defaultHostKeyAlgorithms,
	}
	bad := func(key string) error {
		return fmt.Errorf("ssh: %s: %s: invalid %s %q", e.s.file, e.hostArg, key, e.opts[key])
	}
	h, err := e.hostname()
	if err != nil {
		return nil, fmt.Errorf("ssh: %s: HostName %q: %w", e.s.file, e.opts["hostname"], err)
	}
	if !isAddr(h) {
		h = strings.ToLower(h)
	}
	r.hostname = h
	r.user = e.opts["user"]
	if r.user == "" {
		r.user = e.s.localUser
	}
	r.port = 22
	if v, ok := e.opts["port"]; ok {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			return nil, bad("port")
		}
		r.port = p
	}
	if len(r.identityFiles) == 0 {
		r.identityFiles = defaultIdentityFiles
	}
	switch strings.ToLower(e.opts["identitiesonly"]) {
	case "", "no", "false":
	case "yes", "true":
		r.identitiesOnly = true
	default:
		return nil, bad("identitiesonly")
	}
	if v := e.opts["proxyjump"]; !strings.EqualFold(v, "none") {
		r.proxyJump = v
	}
	if v := e.opts["proxycommand"]; !strings.EqualFold(v, "none") {
		r.proxyCommand = v
	}
	r.hostKeyAlias = strings.ToLower(e.opts["hostkeyalias"])
	if v, ok := e.opts["stricthostkeychecking"]; ok {
		switch v = strings.ToLower(v); v {
		case "yes", "true":
			r.strictHostKeys = "true"
		case "no", "false", "off":
			r.strictHostKeys = "false"
		case "ask", "accept-new":
			r.strictHostKeys = v
		default:
			return nil, bad("stricthostkeychecking")
		}
	}
	num := func(key string, dst *int, min int) error {
		v, ok := e.opts[key]
		if !ok || key == "connecttimeout" && strings.EqualFold(v, "none") {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			return bad(key)
		}
		*dst = n
		return nil
	}
	for _, n := range []struct {
		key string
		dst *int
		min int
	}{{"connecttimeout", &r.connectTimeout, 0}, {"serveraliveinterval", &r.aliveInterval, 0}, {"serveralivecountmax", &r.aliveCountMax, 0}} {
		if err := num(n.key, n.dst, n.min); err != nil {
			return nil, err
		}
	}
	if v, ok := e.opts["hostkeyalgorithms"]; ok {
		r.hostKeyAlgorithms = applyAlgoList(defaultHostKeyAlgorithms, v)
	}
	r.identityAgent = e.opts["identityagent"]
	switch strings.ToLower(e.opts["hashknownhosts"]) {
	case "", "no", "false":
	case "yes", "true":
		r.hashKnownHosts = true
	default:
		return nil, bad("hashknownhosts")
	}

	alias := r.hostKeyAlias
	if alias == "" {
		alias = e.hostArg
	}
	tokens := e.s.tokens(r.hostname, e.hostArg, alias, r.user, r.port)
	user := e.khUser
	if len(user) == 0 {
		user = []string{"~/.ssh/known_hosts", "~/.ssh/known_hosts2"}
	}
	for _, f := range user {
		p, err := e.s.expandPath(f, tokens)
		if err != nil {
			return nil, fmt.Errorf("ssh: %s: UserKnownHostsFile %q: %w", e.s.file, f, err)
		}
		r.userKnownHosts = append(r.userKnownHosts, p)
	}
	global := e.khGlobal
	if len(global) == 0 {
		global = []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}
	}
	for _, f := range global {
		r.globalKnownHosts = append(r.globalKnownHosts, e.s.expandTilde(f))
	}
	return r, nil
}

// isAddr is ssh.c's is_addr: what looks like an address is not
// lowercased.
func isAddr(h string) bool {
	return strings.ContainsAny(h, "%:") || strings.Trim(h, "0123456789.") == "" || net.ParseIP(h) != nil
}

// applyAlgoList applies a HostKeyAlgorithms value to the default list:
// "+x" appends, "-x" removes (patterns), "^x" puts first, else replaces.
func applyAlgoList(def, v string) string {
	if v == "" {
		return def
	}
	list := strings.Split(def, ",")
	add := strings.Split(v[1:], ",")
	switch v[0] {
	case '+':
		for _, a := range add {
			if !contains(list, a) {
				list = append(list, a)
			}
		}
	case '-':
		var out []string
		for _, a := range list {
			if matchPatternList(a, v[1:], false) != 1 {
				out = append(out, a)
			}
		}
		list = out
	case '^':
		var out []string
		out = append(out, add...)
		for _, a := range list {
			if !contains(add, a) {
				out = append(out, a)
			}
		}
		list = out
	default:
		return v
	}
	return strings.Join(list, ",")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// matchPattern is OpenSSH's match_pattern: * any run, ? exactly one
// character, case-sensitive.
func matchPattern(s, p string) bool {
	for {
		if p == "" {
			return s == ""
		}
		if p[0] == '*' {
			for p != "" && p[0] == '*' {
				p = p[1:]
			}
			if p == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if matchPattern(s[i:], p) {
					return true
				}
			}
			return false
		}
		if s == "" {
			return false
		}
		if p[0] != '?' && p[0] != s[0] {
			return false
		}
		s, p = s[1:], p[1:]
	}
}

// matchPatternList is OpenSSH's match_pattern_list: a comma-separated
// list of patterns, each possibly negated with !. It returns 1 for a
// match, -1 for a negated match, 0 for none. With lower the patterns are
// lowercased first.
func matchPatternList(s, list string, lower bool) int {
	got := 0
	for sub := range strings.SplitSeq(list, ",") {
		neg := strings.HasPrefix(sub, "!")
		if neg {
			sub = sub[1:]
		}
		if lower {
			sub = strings.ToLower(sub)
		}
		if matchPattern(s, sub) {
			if neg {
				return -1
			}
			got = 1
		}
	}
	return got
}

// matchHostname is OpenSSH's match_hostname: the pattern list against
// the host name, both lowercased.
func matchHostname(host, list string) bool {
	return matchPatternList(strings.ToLower(host), list, true) == 1
}

// tokens are the % tokens of ssh_config(5) for a connection.
func (s *settings) tokens(host, hostArg, alias, user string, port int) map[byte]string {
	local, _ := os.Hostname()
	short, _, _ := strings.Cut(local, ".")
	p := strconv.Itoa(port)
	sum := sha1.Sum([]byte(local + host + p + user))
	return map[byte]string{
		'%': "%", 'C': hex.EncodeToString(sum[:]), 'L': short, 'd': s.home, 'h': host,
		'i': strconv.Itoa(os.Getuid()), 'k': alias, 'l': local, 'n': hostArg, 'p': p,
		'r': user, 'u': s.localUser,
	}
}

// percentExpand replaces %x tokens; an unknown one is an error.
func percentExpand(v string, tokens map[byte]string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 == len(v) {
			return "", errors.New("% at the end")
		}
		i++
		if v[i] == '%' {
			b.WriteByte('%')
			continue
		}
		t, ok := tokens[v[i]]
		if !ok {
			return "", fmt.Errorf("unknown token %%%c", v[i])
		}
		b.WriteString(t)
	}
	return b.String(), nil
}

// dollarExpand replaces ${NAME} with the environment variable; an unset
// one is an error, as in OpenSSH.
func dollarExpand(v string) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(v, "${")
		if i < 0 {
			b.WriteString(v)
			return b.String(), nil
		}
		end := strings.IndexByte(v[i:], '}')
		if end < 0 {
			return "", errors.New("unterminated ${")
		}
		name := v[i+2 : i+end]
		val, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(v[:i])
		b.WriteString(val)
		v = v[i+end+1:]
	}
}

func (s *settings) expandTilde(p string) string {
	if p == "~" {
		return s.home
	}
	if strings.HasPrefix(p, "~/") {
		return filepath.Join(s.home, p[2:])
	}
	return p
}

// expandPath expands a leading ~, ${NAME} and the % tokens, as OpenSSH
// expands IdentityFile and UserKnownHostsFile.
func (s *settings) expandPath(p string, tokens map[byte]string) (string, error) {
	p = s.expandTilde(p)
	p, err := dollarExpand(p)
	if err != nil {
		return "", err
	}
	return percentExpand(p, tokens)
}
