package image

import (
	"bytes"
	"fmt"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"
)

// Script is what nbship reads of a netboot.ipxe: the simple form NixOS
// writes, one kernel line and its initrd lines:
//
//	#!ipxe
//	kernel bzImage init=/nix/store/…/init initrd=initrd loglevel=4 ${cmdline}
//	initrd initrd
//	boot
//
// Other commands (boot, echo, set, goto, labels, comments) are passed over;
// chaining to another script is refused because nbship could not check what
// it loads.
type Script struct {
	Kernel  Ref   // the kernel (or imgselect) line
	Initrds []Ref // initrd (imgfetch, module) lines, in order
}

// Ref is one image a script loads.
type Ref struct {
	Line int      // 1-based line of the script
	Cmd  string   // the command as written: kernel, initrd, imgselect, …
	URI  string   // first non-option argument, as written
	Name string   // the --name option, if given
	Args []string // arguments after URI; for the kernel, its command line
}

// ParseError is a script iPXE may run but nbship does not accept.
type ParseError struct {
	Line int // 0: the script as a whole
	Msg  string
}

func (e *ParseError) Error() string {
	if e.Line == 0 {
		return "ipxe: " + e.Msg
	}
	return fmt.Sprintf("ipxe: line %d: %s", e.Line, e.Msg)
}

// ScriptName is the file a booting machine fetches first.
const ScriptName = "netboot.ipxe"

// maxScript bounds what is read of a netboot.ipxe.
const maxScript = 1 << 20

var (
	kernelCmds = map[string]bool{"kernel": true, "imgselect": true}
	initrdCmds = map[string]bool{"initrd": true, "imgfetch": true, "module": true}
	chainCmds  = map[string]bool{"chain": true, "imgexec": true, "sanboot": true}
	// options of the image commands; true: takes a value
	imageOpts = map[string]bool{
		"--name": true, "-n": true, "--timeout": true, "-t": true,
		"--autofree": false, "-a": false, "--replace": false, "-r": false,
	}
)

// ParseIPXE reads a netboot.ipxe. It must start with #!ipxe and load
// exactly one kernel.
func ParseIPXE(data []byte) (Script, error) {
	var s Script
	if len(data) > maxScript {
		return s, &ParseError{0, "script is larger than 1 MiB; is this the right file?"}
	}
	if !utf8.Valid(data) {
		return s, &ParseError{0, "script is not UTF-8 text; is this the right file?"}
	}
	lines := bytes.Split(data, []byte("\n"))
	first := strings.TrimRight(string(lines[0]), " \t\r")
	if first != "#!ipxe" && first != "#!gpxe" {
		return s, &ParseError{1, `script does not start with "#!ipxe"; iPXE would not run it as a script`}
	}
	haveKernel := false
	for i, raw := range lines[1:] {
		n := i + 2
		line := strings.TrimRight(string(raw), "\r")
		if j := strings.IndexFunc(line, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }); j >= 0 {
			return s, &ParseError{n, fmt.Sprintf("control character %q at column %d", line[j], j+1)}
		}
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ":") {
			continue
		}
		// "a || b", "a && b": each part is a command.
		for len(fields) > 0 {
			cmd := fields
			rest := []string(nil)
			for k, f := range fields {
				if f == "||" || f == "&&" {
					cmd, rest = fields[:k], fields[k+1:]
					break
				}
			}
			fields = rest
			if len(cmd) == 0 {
				continue
			}
			name := cmd[0]
			switch {
			case chainCmds[name]:
				return s, &ParseError{n, fmt.Sprintf("%s: the script hands over to another image; nbship publishes scripts that load their kernel with a kernel line", name)}
			case kernelCmds[name], initrdCmds[name]:
				ref, err := parseRef(n, cmd)
				if err != nil {
					return s, err
				}
				if kernelCmds[name] {
					if haveKernel {
						return s, &ParseError{n, fmt.Sprintf("%s: a second kernel (line %d loads one already); keep one kernel line", name, s.Kernel.Line)}
					}
					haveKernel = true
					s.Kernel = ref
				} else {
					s.Initrds = append(s.Initrds, ref)
				}
			}
		}
	}
	if !haveKernel {
		return s, &ParseError{0, "script has no kernel line; add one like: kernel bzImage init=… initrd=initrd"}
	}
	return s, nil
}

func parseRef(line int, cmd []string) (Ref, error) {
	r := Ref{Line: line, Cmd: cmd[0]}
	args := cmd[1:]
	for len(args) > 0 {
		a := args[0]
		if a == "--" {
			args = args[1:]
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		opt, val, hasVal := a, "", false
		if strings.HasPrefix(a, "--") {
			opt, val, hasVal = strings.Cut(a, "=")
		} else if len(a) > 2 {
			opt, val, hasVal = a[:2], a[2:], true // -nNAME
		}
		takes, known := imageOpts[opt]
		if !known {
			return r, &ParseError{line, fmt.Sprintf("%s: unknown option %s", r.Cmd, opt)}
		}
		args = args[1:]
		switch {
		case takes && !hasVal:
			if len(args) == 0 {
				return r, &ParseError{line, fmt.Sprintf("%s: option %s needs a value", r.Cmd, opt)}
			}
			val, args = args[0], args[1:]
		case !takes && hasVal:
			return r, &ParseError{line, fmt.Sprintf("%s: option %s takes no value", r.Cmd, opt)}
		}
		if opt == "--name" || opt == "-n" {
			r.Name = val
		}
	}
	if len(args) == 0 {
		return r, &ParseError{line, fmt.Sprintf("%s: no file named; write it like: %s %s", r.Cmd, r.Cmd, map[bool]string{true: "bzImage", false: "initrd"}[kernelCmds[r.Cmd]])}
	}
	r.URI, r.Args = args[0], args[1:]
	return r, nil
}

// File returns the name of the file r loads, which must lie beside the
// script: a plain relative name, no URL, no absolute path, no "..", no
// subdirectory and no ${variable}.
func (r Ref) File() (string, error) {
	if strings.Contains(r.URI, "${") {
		return "", fmt.Errorf("%s %s uses a variable; nbship cannot tell which file it loads, write the file name", r.Cmd, r.URI)
	}
	u, err := url.Parse(r.URI)
	if err != nil {
		return "", fmt.Errorf("%s %q is not a valid URI", r.Cmd, r.URI)
	}
	if u.Scheme != "" || u.Host != "" || u.Opaque != "" || strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("%s %s points outside the generation; name a file beside %s", r.Cmd, r.URI, ScriptName)
	}
	p := path.Clean(u.Path)
	switch {
	case p == ".." || strings.HasPrefix(p, "../"):
		return "", fmt.Errorf("%s %s points outside the generation; name a file beside %s", r.Cmd, r.URI, ScriptName)
	case p == "." || p == "":
		return "", fmt.Errorf("%s %q names no file", r.Cmd, r.URI)
	case strings.Contains(p, "/"):
		return "", fmt.Errorf("%s %s names a file in a subdirectory; put it beside %s", r.Cmd, r.URI, ScriptName)
	}
	return p, nil
}
