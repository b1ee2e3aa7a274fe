# Benchmark data: a closure of 1,000 small store paths (bench/run.sh:
# nix-build bench/many.nix -A many), the case where tools that make one or
# more round trips per path are slowest on a long link.
#
# One derivation with 1,000 outputs, so the builder runs once: `out` and
# p001 … p999. Output i holds a Go source file of the toolchain at
# /usr/local/go (the i-th in sorted order, cut to 16 KiB), a two-line
# script and a file naming output i/2, so each path but the first
# references another and `out` references them all: about 5 MB in 3,000
# files. Deterministic for a given Go toolchain.
#
# A plain derivation (no nixpkgs): the builder is the host's /bin/sh and
# reads outside the store, so `sandbox = false` is required (the rig's
# nix.conf has it).
{ goroot ? "/usr/local/go", n ? 1000 }:
let
  pad = i: let s = toString i; in if i < 10 then "00${s}" else if i < 100 then "0${s}" else s;
  names = map (i: "p${pad i}") (builtins.genList (i: i + 1) (n - 1));
in
{
  many = derivation {
    name = "bench-many";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = [ "out" ] ++ names;
    inherit goroot;
    count = toString n;
    args = [ "-c" ''
      set -e
      /usr/bin/find "$goroot/src" -name '*.go' -type f | /usr/bin/sort | /usr/bin/head -n "$count" >files
      i=0
      while read -r f; do
        i=$((i + 1))
        [ "$i" -lt "$count" ] || break
        name=$(printf 'p%03d' "$i")
        eval "dir=\$$name"
        /bin/mkdir -p "$dir/share/src" "$dir/bin"
        /usr/bin/head -c 16384 "$f" >"$dir/share/src/$(/usr/bin/basename "$f")"
        printf '#!/bin/sh\necho %s\n' "$name" >"$dir/bin/$name"
        /bin/chmod 0755 "$dir/bin/$name"
        up=$((i / 2))
        if [ "$up" -ge 1 ]; then
          eval "ref=\$$(printf 'p%03d' "$up")"
          echo "$ref" >"$dir/share/depends"
        else
          : >"$dir/share/depends"
        fi
        echo "$dir" >>list
      done <files
      /bin/mkdir -p "$out"
      /bin/mv list "$out/paths"
    '' ];
  };
}
