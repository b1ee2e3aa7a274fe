# What c2.large.arm.nix and m2.xlarge.x86.nix share: a plain derivation (no
# nixpkgs is available here) that assembles one of Debian's installer kernels
# and its initrd into the shape NixOS's netboot output has: the kernel, initrd
# and netboot.ipxe.
#
#   instance, salt, links  as those files describe them.
#   system   the image's Nix system.
#   debArch  Debian's name for the architecture (arm64, amd64).
#   kernel   the kernel's file name in the output (Image, bzImage).
#   console  the kernel's console= arguments.
#
# The builder is the host's /bin/sh (needs `sandbox = false`); PATH is unset in
# Nix builds, hence absolute /bin paths.
{ instance, salt, links, system, debArch, kernel, console }:
let
  dir = /usr/lib/debian-installer/images/12 + "/${debArch}/text/debian-installer/${debArch}";
  kernelFile = kernel;
in
derivation {
  name = "netboot-${instance}";
  inherit system;
  builder = "/bin/sh";
  kernel = builtins.path { path = dir + "/linux"; name = "debian-12-${debArch}-${kernelFile}"; };
  initrd = builtins.path { path = dir + "/initrd.gz"; name = "debian-12-${debArch}-initrd"; };
  inherit salt;
  link = if links then "1" else "";
  ipxe = ''
    #!ipxe
    # ${instance} netboot image (nbship test data); salt: ${salt}
    # Use the cmdline variable to allow the user to specify custom kernel params
    # when chainloading this script from other iPXE scripts like netboot.xyz
    kernel ${kernelFile} init=/sbin/init initrd=initrd ${console} ''${cmdline}
    initrd initrd
    boot
  '';
  args = [ "-c" ''
    set -e
    /bin/mkdir "$out"
    if [ -n "$link" ]; then
      /bin/ln -s "$kernel" "$out/${kernelFile}"
      /bin/ln -s "$initrd" "$out/initrd"
    else
      /bin/cp "$kernel" "$out/${kernelFile}"
      /bin/cp "$initrd" "$out/initrd"
    fi
    printf '%s' "$ipxe" > "$out/netboot.ipxe"
  '' ];
}
