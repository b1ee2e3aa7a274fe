package protocol

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nbship/nbship/remote"
)

func TestRetryableAndExitCode(t *testing.T) {
	remoteExit := func(status int) error {
		return fmt.Errorf("ship: %w", &remote.ExitError{Host: "netboot@pxe", Command: "nbship recv", Status: status, Stderr: "nbship: recv: it failed\n"})
	}
	localExit := func(status int) error {
		return &remote.ExitError{Host: "local", Command: "nbship recv", Status: status}
	}
	for _, tc := range []struct {
		name      string
		err       error
		retryable bool
		code      int
	}{
		{"end died", remoteExit(1), true, 0},
		{"killed", remoteExit(137), true, 0},
		{"link", errors.New("ssh: connection lost"), true, 0},
		{"refused over ssh", remoteExit(ExitRefused), false, ExitRefused},
		{"refused locally", localExit(ExitRefused), false, ExitRefused},
		{"pin over ssh", remoteExit(ExitPin), false, ExitPin},
		{"pin locally", localExit(ExitPin), false, ExitPin},
		{"usage", remoteExit(2), false, 0},
		{"refusal", fmt.Errorf("x: %w", &RefusedError{By: "netboot@pxe", Reason: "bad"}), false, ExitRefused},
		{"cancelled", context.Canceled, false, 0},
	} {
		if got := Retryable(context.Background(), tc.err); got != tc.retryable {
			t.Errorf("Retryable(%s) = %v, want %v", tc.name, got, tc.retryable)
		}
		if got := ExitCode(tc.err); got != tc.code {
			t.Errorf("ExitCode(%s) = %d, want %d", tc.name, got, tc.code)
		}
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct{ err, want string }{
		{"recv: transfer: refused stream: a: SHA-256 x does not match the announced y", "a: SHA-256 x does not match the announced y"},
		{"send: transfer: the receiver refused the stream: transfer: refused stream: bad", "bad"},
		{"recv: image: /x/Image is an x86_64 bzImage", "image: /x/Image is an x86_64 bzImage"},
		{`send: transfer: refused entry "leak": symlink to /etc`, `refused entry "leak": symlink to /etc`},
	} {
		if got := Reason(errors.New(tc.err)); got != tc.want {
			t.Errorf("Reason(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestRefused(t *testing.T) {
	exit := func(status int) error {
		return &remote.ExitError{Host: "pxe", Command: "nbship recv", Status: status, Stderr: "progress\nnbship: recv: the prose\n"}
	}
	said := &Refusal{Reason: "the reason"}
	for _, tc := range []struct {
		name string
		err  error
		r    *Refusal
		want string // "" for nil
	}{
		{"its line", exit(ExitRefused), said, "the reason"},
		{"no line", exit(ExitRefused), nil, "nbship: recv: the prose"},
		{"not refused", exit(1), said, ""},
		{"no exit", errors.New("link"), said, ""},
	} {
		re := Refused("pxe", tc.err, tc.r)
		switch {
		case tc.want == "" && re != nil:
			t.Errorf("Refused(%s) = %v, want nil", tc.name, re)
		case tc.want != "" && (re == nil || re.Reason != tc.want || re.By != "pxe"):
			t.Errorf("Refused(%s) = %v, want pxe refusing %q", tc.name, re, tc.want)
		}
	}
}

func TestExplain(t *testing.T) {
	usage := &Error{Code: ExitUsage, Err: errors.New("recv: bad flag")}
	for _, tc := range []struct {
		name string
		err  error
		code int
		hint string
	}{
		{"plain", errors.New("x"), 0, ""},
		{"code", usage, ExitUsage, ""},
		{"hint on a code", &Error{Err: usage, Hint: "do this"}, ExitUsage, "do this"},
		{"wrapped", fmt.Errorf("ship: %w", &Error{Code: ExitRefused, Err: &Error{Err: errors.New("y"), Hint: "inner"}}), ExitRefused, "inner"},
		{"outermost wins", &Error{Code: ExitPin, Hint: "outer", Err: &Error{Code: ExitRefused, Hint: "inner", Err: errors.New("z")}}, ExitPin, "outer"},
	} {
		code, hint := Explain(tc.err)
		if code != tc.code || hint != tc.hint {
			t.Errorf("Explain(%s) = %d, %q; want %d, %q", tc.name, code, hint, tc.code, tc.hint)
		}
	}
	if got := ExitCode(fmt.Errorf("x: %w", &Error{Code: ExitRefused, Err: errors.New("r")})); got != ExitRefused {
		t.Errorf("ExitCode of a refusal Error = %d, want %d", got, ExitRefused)
	}
}
