package remote

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"nix-store", "nix-store"},
		{"/nix/store/abc-foo.drv", "/nix/store/abc-foo.drv"},
		{"--cores=45", "'--cores=45'"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"'", `''\'''`},
		{"$HOME", "'$HOME'"},
		{"~", "'~'"},
		{"if", "'if'"},
		{"a\nb", "'a\nb'"},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.want {
			t.Errorf("Quote(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got, want := QuoteArgs([]string{"echo", "a b", ""}), "echo 'a b' ''"; got != want {
		t.Errorf("QuoteArgs = %q, want %q", got, want)
	}
}

// hostile are arguments a shell would love to misread.
func hostile(dir string) []string {
	return []string{
		"", " ", "  two  spaces  ", "a b", "'", "''", `"`, `\`, `\'`, `'\''`,
		"$(touch " + dir + "/pwned1)", "`touch " + dir + "/pwned2`", "; touch " + dir + "/pwned3",
		"&& touch " + dir + "/pwned4", "| touch " + dir + "/pwned5", "> " + dir + "/pwned6",
		"$HOME", "${HOME}", "$", "$$", "$?", "$1", "*", "?", "[a]", "{a,b}", "~", "~root", "#", "#x", "!",
		"!!", "^", "%", "-", "--", "-n", "-e", "-E", "--help", "a=b", "if", "then", "fi", "time",
		"\n", "a\nb", "\r\n", "\t", "line1\nline2\n", "\x01\x7f", "\xff\xfe\x80", "é", "日本",
		"%s", "%%", `\n`, "\\\\", "a'b\"c$d`e\\f", strings.Repeat("x'", 200),
	}
}

func TestQuoteLocalShells(t *testing.T) {
	args := hostile(t.TempDir())
	want := []byte(strings.Join(args, "\x00") + "\x00")
	for _, sh := range []string{"sh", "dash", "bash", "zsh", "ksh", "busybox"} {
		path, err := exec.LookPath(sh)
		if err != nil {
			continue
		}
		shArgs := []string{"-c", "printf '%s\\0' " + QuoteArgs(args)}
		if sh == "busybox" {
			shArgs = append([]string{"sh"}, shArgs...)
		}
		got, err := exec.Command(path, shArgs...).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s -c printf QuoteArgs(hostile) = %q, %v, want %q", sh, got, err, want)
		}
	}
}

func TestQuoteRemote(t *testing.T) {
	t.Parallel()
	_, _, c := rigClient(t)
	dir := t.TempDir()
	args := hostile(dir)
	want := []byte(strings.Join(args, "\x00") + "\x00")
	ctx := context.Background()

	// Through the login shell (bash here) to printf.
	got, err := c.Output(ctx, append([]string{"printf", `%s\0`}, args...)...)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("Output(printf hostile) = %q, %v, want %q", got, err, want)
	}
	// Through the login shell and then a real sh.
	got, err = c.Output(ctx, append([]string{"sh", "-c", `printf '%s\0' "$@"`, "sh"}, args...)...)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("Output(sh -c printf hostile) = %q, %v, want %q", got, err, want)
	}
	// As environment values.
	env := map[string]string{}
	script := ""
	for i, a := range args {
		name := "NBSHIP_TEST_" + strconv.Itoa(i)
		env[name] = a
		script += ` "$` + name + `"`
	}
	got, err = runOutput(ctx, c, Cmd{Args: []string{"sh", "-c", `printf '%s\0'` + script}, Env: env})
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("Env values read back as %q, %v, want %q", got, err, want)
	}
	// In the wrapper for commands fed on stdin as well.
	var out bytes.Buffer
	err = c.Run(ctx, Cmd{Args: append([]string{"printf", `%s\0`}, args...), Stdin: strings.NewReader(""), Stdout: &out})
	if err != nil || !bytes.Equal(out.Bytes(), want) {
		t.Errorf("Run(printf hostile, Stdin) = %q, %v, want %q", out.Bytes(), err, want)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "pwned*"))
	if len(matches) > 0 {
		t.Errorf("the remote shell ran an argument: %v", matches)
	}
}

// runOutput runs cmd and returns its stdout.
func runOutput(ctx context.Context, c *Client, cmd Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	err := c.Run(ctx, cmd)
	return out.Bytes(), err
}

func TestCommandLineRefusals(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "no command"},
		{[]string{"echo", "a\x00b"}, nil, "NUL"},
		{[]string{"env"}, map[string]string{"A B": "x"}, "invalid environment variable name"},
		{[]string{"env"}, map[string]string{"1A": "x"}, "invalid environment variable name"},
		{[]string{"env"}, map[string]string{"": "x"}, "invalid environment variable name"},
		{[]string{"env"}, map[string]string{"A;touch x": "x"}, "invalid environment variable name"},
		{[]string{"env"}, map[string]string{"A": "x\x00"}, "NUL"},
	}
	for _, tt := range tests {
		_, err := commandLine(tt.args, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("commandLine(%q, %q) = %v, want an error with %q", tt.args, tt.env, err, tt.want)
		}
	}
	got, err := commandLine([]string{"env"}, map[string]string{"B": "2 2", "A_1": "'"})
	if want := `A_1=''\''' B='2 2' env`; err != nil || got != want {
		t.Errorf("commandLine(env, A_1 B) = %q, %v, want %q", got, err, want)
	}
}

// unquoteWords splits a command line made by QuoteArgs back into words,
// by the POSIX rules for the two forms it produces. It fails on anything
// else a shell would treat specially.
func unquoteWords(s string) ([]string, error) {
	var words []string
	for len(s) > 0 {
		var w strings.Builder
		for len(s) > 0 && s[0] != ' ' {
			if s[0] == '\'' {
				end := strings.IndexByte(s[1:], '\'')
				if end < 0 {
					return nil, errors.New("unterminated quote")
				}
				w.WriteString(s[1 : 1+end])
				s = s[2+end:]
				continue
			}
			if s[0] == '\\' && len(s) > 1 {
				w.WriteByte(s[1])
				s = s[2:]
				continue
			}
			if !isPlainWord(s[:1]) {
				return nil, errors.New("unquoted special character " + s[:1])
			}
			w.WriteByte(s[0])
			s = s[1:]
		}
		words = append(words, w.String())
		if len(s) > 0 {
			s = s[1:]
		}
	}
	return words, nil
}

func FuzzQuote(f *testing.F) {
	for _, a := range hostile("/tmp") {
		f.Add(a, "x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		q := Quote(a)
		if isPlainWord(q) && reservedWords[q] {
			t.Fatalf("Quote(%q) = %q, a reserved word unquoted", a, q)
		}
		args := []string{a, b}
		words, err := unquoteWords(QuoteArgs(args))
		if err != nil {
			t.Fatalf("QuoteArgs(%q) = %q: %v", args, QuoteArgs(args), err)
		}
		if len(words) != 2 || words[0] != a || words[1] != b {
			t.Fatalf("QuoteArgs(%q) = %q, reads back as %q", args, QuoteArgs(args), words)
		}
	})
}
