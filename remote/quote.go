package remote

import (
	"fmt"
	"sort"
	"strings"
)

// Quote returns s quoted for a POSIX shell so that the shell reads it back
// as exactly one word with exactly the bytes of s (any bytes except NUL,
// which no argument can hold). Words made only of characters that no shell
// treats specially are returned as they are, so messages stay readable;
// everything else is put in single quotes, a quote inside it written as
// quote, backslash, quote, quote (close, escaped quote, reopen).
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	if isPlainWord(s) && !reservedWords[s] {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			b.WriteString(`'\''`)
			continue
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('\'')
	return b.String()
}

// isPlainWord reports whether s needs no quoting. '=' is left out on
// purpose: an unquoted NAME=value in first position is an assignment.
// '~', '#', '{', '}', '[', ']', '!' and '^' mean something to one shell or
// another at the start of a word, so they are quoted too.
func isPlainWord(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '_' || c == '.' || c == '/' || c == ':' || c == ',' || c == '+' || c == '@' || c == '%':
		default:
			return false
		}
	}
	return true
}

// reservedWords are recognised by a shell only when unquoted and in
// command position; quoting them everywhere keeps Quote context-free.
var reservedWords = map[string]bool{
	"if": true, "then": true, "else": true, "elif": true, "fi": true,
	"do": true, "done": true, "case": true, "esac": true, "while": true,
	"until": true, "for": true, "in": true, "function": true,
	"select": true, "time": true, "coproc": true,
}

// QuoteArgs quotes each element with Quote and joins them with spaces: the
// result is a shell command line that runs args as the argv of one command.
func QuoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// validEnvName reports whether name can be used as NAME=value in front of
// a shell command: a letter or underscore, then letters, digits and
// underscores.
func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// commandLine builds the shell command line for args with env as
// NAME=value prefixes (sorted by name, so the line is stable). It refuses
// what no shell could pass on: an empty argv, NUL bytes, bad names.
func commandLine(args []string, env map[string]string) (string, error) {
	if len(args) == 0 {
		return "", fmt.Errorf("no command given")
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d (%.40q) contains a NUL byte", i, a)
		}
	}
	names := make([]string, 0, len(env))
	for name, value := range env {
		if !validEnvName(name) {
			return "", fmt.Errorf("invalid environment variable name %q", name)
		}
		if strings.IndexByte(value, 0) >= 0 {
			return "", fmt.Errorf("environment variable %s contains a NUL byte", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte('=')
		b.WriteString(Quote(env[name]))
		b.WriteByte(' ')
	}
	b.WriteString(QuoteArgs(args))
	return b.String(), nil
}
