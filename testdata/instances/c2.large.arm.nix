# Test stand-in for a NixOS netboot image of instance type c2.large.arm
# (aarch64-linux). No nixpkgs is available here, so this is a plain derivation
# that assembles Debian's arm64 installer kernel and initrd into the same shape
# NixOS's netboot output has: Image, initrd, netboot.ipxe.
#
#   instance  the instance type it stands for (the other arm files import
#          this one with their own name).
#   salt   any string; it lands in netboot.ipxe, so a new salt forces a new build.
#   links  true: Image and initrd are symlinks to their source store paths (as in
#          a real NixOS netboot output, whose files point into other store paths);
#          false (default): plain copies.
#
# The builder is the host's /bin/sh (needs `sandbox = false`); PATH is unset in
# Nix builds, hence absolute /bin paths.
{ salt ? "", links ? false, instance ? "c2.large.arm" }:
let
  dir = /usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64;
  kernel = builtins.path { path = dir + "/linux"; name = "debian-12-arm64-Image"; };
  initrd = builtins.path { path = dir + "/initrd.gz"; name = "debian-12-arm64-initrd"; };
in
derivation {
  name = "netboot-${instance}";
  system = "aarch64-linux";
  builder = "/bin/sh";
  inherit kernel initrd salt;
  link = if links then "1" else "";
  ipxe = ''
    #!ipxe
    # ${instance} netboot image (nbship test data); salt: ${salt}
    # Use the cmdline variable to allow the user to specify custom kernel params
    # when chainloading this script from other iPXE scripts like netboot.xyz
    kernel Image init=/sbin/init initrd=initrd console=ttyAMA0,115200 ''${cmdline}
    initrd initrd
    boot
  '';
  args = [ "-c" ''
    set -e
    /bin/mkdir "$out"
    if [ -n "$link" ]; then
      /bin/ln -s "$kernel" "$out/Image"
      /bin/ln -s "$initrd" "$out/initrd"
    else
      /bin/cp "$kernel" "$out/Image"
      /bin/cp "$initrd" "$out/initrd"
    fi
    printf '%s' "$ipxe" > "$out/netboot.ipxe"
  '' ];
}
