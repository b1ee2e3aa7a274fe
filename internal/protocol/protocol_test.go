package protocol

import (
	"strings"
	"testing"
	"time"
)

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args func() ([]string, error)
		want string // the command line, or "error: ..." (a part of it)
	}{
		{"recv publish", Recv{Listen: ":61616", AcceptTimeout: 35 * time.Second, Publish: "/srv/netboot", Instance: "c2.large.arm", Keep: 3, KeepPartial: true, Idle: time.Minute}.Args,
			"recv --listen :61616 --accept-timeout 35s --pxe-dir /srv/netboot --instance c2.large.arm --keep 3 --keep-partial --idle-timeout 1m0s --peer-pin - --json --stdin-lifeline"},
		{"recv store over stdio", Recv{Stdio: true, Listen: ":1", Store: true, Substitute: true}.Args,
			"recv --stdio --store --substitute --peer-pin - --json --stdin-lifeline"},
		{"recv store keeps partial NARs", Recv{Listen: ":1", Store: true, KeepPartial: true}.Args,
			"recv --listen :1 --store --keep-partial --peer-pin - --json --stdin-lifeline"},
		{"recv dest keeps nothing", Recv{Listen: ":0", Dest: "/d", KeepPartial: true}.Args,
			"recv --listen :0 --dest /d --peer-pin - --json --stdin-lifeline"},
		{"recv dest", Recv{Listen: ":0", Dest: "/d", Replace: true}.Args,
			"recv --listen :0 --dest /d --replace --peer-pin - --json --stdin-lifeline"},
		{"recv two targets", Recv{Listen: ":0", Dest: "/d", Store: true}.Args, "error: exactly one of Dest, Publish and Store"},
		{"recv nowhere", Recv{Store: true}.Args, "error: recv needs --listen or --stdio"},
		{"send files", Send{Connect: "pxe:61616", DialTimeout: 5 * time.Second, Paths: []string{"/nix/store/x-netboot", "-odd"}, Level: "auto"}.Args,
			"send --connect pxe:61616 --dial-timeout 5s --level auto --peer-pin - --json --stdin-lifeline -- /nix/store/x-netboot -odd"},
		{"send over lanes", Send{Connect: "pxe:61616", Lanes: 2, Paths: []string{"/x"}}.Args,
			"send --connect pxe:61616 --lanes 2 --peer-pin - --json --stdin-lifeline -- /x"},
		{"no lanes over stdio", Send{Stdio: true, Lanes: 2, Paths: []string{"/x"}}.Args,
			"send --stdio --peer-pin - --json --stdin-lifeline -- /x"},
		{"send store signs", Send{Stdio: true, Store: true, SignKey: "/etc/nix/key.sec", Paths: []string{"/nix/store/x"}}.Args,
			"send --stdio --store --sign-key /etc/nix/key.sec --peer-pin - --json --stdin-lifeline"},
		{"send store files", Send{Connect: "h:1", StoreFiles: true, FollowAnySymlink: true}.Args,
			"send --connect h:1 --store-files --follow-any-symlink --peer-pin - --json --stdin-lifeline"},
		{"send both kinds", Send{Connect: "h:1", Store: true, StoreFiles: true}.Args, "error: at most one of Store and StoreFiles"},
		{"send nothing", Send{Connect: "h:1"}.Args, "error: no path to send"},
	} {
		a, err := tc.args()
		got := strings.Join(a, " ")
		if err != nil {
			got = "error: " + err.Error()
		}
		if w, ok := strings.CutPrefix(tc.want, "error: "); ok {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Args() = %q, want an error with %q", tc.name, got, w)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("%s: Args() = %q, want %q", tc.name, got, tc.want)
		}
	}
	r := Send{Store: true, Paths: []string{"/nix/store/a"}}
	if p := r.StdinPaths(); len(p) != 1 {
		t.Errorf("StdinPaths of a store sender = %v, want its paths", p)
	}
	if p := (Send{Paths: []string{"/x"}}).StdinPaths(); p != nil {
		t.Errorf("StdinPaths of a file sender = %v, want nil", p)
	}
}

func TestLines(t *testing.T) {
	pin := "SHA256:" + strings.Repeat("A", 43)
	if l := FingerprintLine(pin); !IsFingerprint(l) || ParseFingerprint(l) != pin || ParseFingerprint(pin) != pin {
		t.Errorf("fingerprint line %q does not round-trip", l)
	}
	if a, err := ParseListening(ListeningLine("[::]:61616")); err != nil || a != "[::]:61616" {
		t.Errorf("ParseListening = %q, %v", a, err)
	}
	if _, err := ParseListening("connected x"); err == nil {
		t.Errorf("ParseListening took a connected line")
	}
	if !IsConnected(ConnectedLine("10.0.0.1:61616")) || IsConnected("listening x") {
		t.Errorf("IsConnected is wrong")
	}
}

var refusalLines = []struct {
	line string
	r    Refusal
	ok   bool
}{
	{`refusal self "image: /x/Image is an x86_64 bzImage"`, Refusal{Reason: "image: /x/Image is an x86_64 bzImage"}, true},
	{`refusal peer "bad"`, Refusal{Peer: true, Reason: "bad"}, true},
	{`refusal self "two\nlines"`, Refusal{Reason: "two\nlines"}, true},
	{`refusal self ""`, Refusal{}, true},
	{`refusal self "unterminated`, Refusal{}, false},
	{"refusal self `raw`", Refusal{}, false},
	{`refusal self "a" trailing`, Refusal{}, false},
	{`refusal someone "x"`, Refusal{}, false},
	{`nbship: recv: refusal self "x"`, Refusal{}, false},
	{"fingerprint SHA256:x", Refusal{}, false},
}

func TestParseRefusal(t *testing.T) {
	for _, tc := range refusalLines {
		r, ok := ParseRefusal(tc.line)
		if ok != tc.ok || r != tc.r {
			t.Errorf("ParseRefusal(%q) = %+v, %v; want %+v, %v", tc.line, r, ok, tc.r, tc.ok)
		}
		if ok && r.Line() != tc.line {
			t.Errorf("ParseRefusal(%q).Line() = %q", tc.line, r.Line())
		}
	}
}

// The controller reads refusal lines from the ends' stderr, where a
// reason may come from what the other end sent: a line it parses is one
// Line writes, and a Line is always one line.
func FuzzParseRefusal(f *testing.F) {
	for _, tc := range refusalLines {
		f.Add(tc.line)
		f.Add(tc.r.Reason)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, peer := range []bool{false, true} {
			l := Refusal{Peer: peer, Reason: s}.Line()
			if strings.ContainsAny(l, "\n\r") {
				t.Fatalf("Line of %q spans lines: %q", s, l)
			}
			if r, ok := ParseRefusal(l); !ok || r.Peer != peer || r.Reason != s {
				t.Fatalf("ParseRefusal(%q) = %+v, %v; want back %q", l, r, ok, s)
			}
		}
		if r, ok := ParseRefusal(s); ok {
			if again, ok := ParseRefusal(r.Line()); !ok || again != r {
				t.Fatalf("ParseRefusal(%q) = %+v, which does not survive Line", s, r)
			}
		}
	})
}
