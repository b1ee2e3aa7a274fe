# Benchmark data: a Nix closure of real files for `make bench`, built in the
# rig builder's store (bench/run.sh: nix-build bench/closure.nix -A closure).
#
#   closure  about 400 MB and 15k files: the Go toolchain at /usr/local/go
#            (sources, tests, binaries) split into store paths that reference
#            each other, the shared libraries /usr/bin/nix loads (as ldd lists
#            them; passed in as `libs`) and eight qemu-user emulators (Debian's
#            qemu-user-static, which scripts/deps.sh installs).
#   big      closure plus seven synthetic 256 MiB store paths (4 of
#            incompressible AES-CTR keystream, 3 of Go source text repeated):
#            about 2.1 GiB, for the peak-RSS target. Deterministic: the same
#            bytes on every run.
#
# Plain derivations (no nixpkgs here): the builder is the host's /bin/sh and
# copies from outside the store, so `sandbox = false` is required (the rig's
# nix.conf has it). References are real: each output names the store paths
# it depends on in nix-support/bench-references, and Nix records them.
{ libs ? "", goroot ? "/usr/local/go" }:
let
  system = builtins.currentSystem;
  mk = name: deps: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    inherit deps goroot libs;
    args = [ "-c" ''
      set -e
      /bin/mkdir -p "$out/nix-support"
      ${script}
      for d in $deps; do echo "$d"; done >"$out/nix-support/bench-references"
    '' ];
  };

  goSrc = mk "bench-go-src" [ ] ''/bin/cp -R "$goroot/src" "$out/src"'';
  goTest = mk "bench-go-test" [ goSrc ] ''/bin/cp -R "$goroot/test" "$out/test"'';
  goToolchain = mk "bench-go-toolchain" [ goSrc ] ''
    for f in bin pkg lib api doc misc VERSION go.env LICENSE PATENTS README.md; do
      [ -e "$goroot/$f" ] && /bin/cp -R "$goroot/$f" "$out/"
    done
  '';
  nixLibs = mk "bench-nix-libs" [ ] ''
    /bin/mkdir "$out/lib"
    [ -n "$libs" ] || { echo "closure.nix: libs is empty (pass --argstr libs ...)" >&2; exit 1; }
    for l in $libs; do /bin/cp -L "$l" "$out/lib/"; done
  '';
  qemuUser = mk "bench-qemu-user" [ nixLibs ] ''
    /bin/mkdir "$out/bin"
    for a in aarch64 arm riscv64 x86_64 ppc64le i386 riscv32 s390x; do
      /bin/cp -L "/usr/bin/qemu-$a-static" "$out/bin/"
    done
  '';
  closure = mk "bench-closure" [ goSrc goTest goToolchain nixLibs qemuUser ] ''
    echo "GOROOT=${goToolchain}" >"$out/env"
  '';

  # 256 MiB of bytes zstd cannot shrink: an AES-128-CTR keystream with a
  # fixed key, so every run makes the same bytes.
  random = i: mk "bench-synthetic-random-${toString i}" [ ] ''
    /bin/mkdir "$out/data"
    for k in 0 1 2 3 4 5 6 7; do
      /usr/bin/openssl enc -aes-128-ctr -nosalt -K 0000000000000000000000000000000${toString i} \
        -iv 0000000000000000000000000000000$k -in /dev/zero 2>/dev/null |
        /usr/bin/head -c 33554432 >"$out/data/part-$k"
    done
  '';
  # 256 MiB of text (Go sources, concatenated and repeated), in 32 MiB files.
  text = i: mk "bench-synthetic-text-${toString i}" [ ] ''
    /bin/mkdir "$out/data"
    cd "$out/data"
    /usr/bin/find "$goroot/src" -name '*.go' -type f | /usr/bin/sort | /usr/bin/xargs /bin/cat >base
    /bin/cat base base base base | /usr/bin/tail -c +${toString (i * 4096 + 1)} | /usr/bin/head -c 268435456 | /usr/bin/split -b 33554432 - part-
    /bin/rm base
  '';
  big = mk "bench-closure-big" ([ closure ] ++ map random [ 0 1 2 3 ] ++ map text [ 0 1 2 ]) "";
in
{ inherit closure big; }
