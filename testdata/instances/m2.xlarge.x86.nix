# Test stand-in for a NixOS netboot image of instance type m2.xlarge.x86
# (x86_64-linux). No nixpkgs is available here, so this is a plain derivation
# that assembles Debian's amd64 installer kernel and initrd into the same shape
# NixOS's netboot output has: bzImage, initrd, netboot.ipxe.
#
#   instance  the instance type it stands for (the other x86 files import
#          this one with their own name).
#   salt   any string; it lands in netboot.ipxe, so a new salt forces a new build.
#   links  true: bzImage and initrd are symlinks to their source store paths (as
#          in a real NixOS netboot output, whose files point into other store
#          paths); false (default): plain copies.
#
# The script boots as is: qemu-system-x86_64 with iPXE fetches it over HTTP and
# the kernel talks on ttyS0 (QEMU's serial) as well as ttyS1 (Packet's SOS
# console for x86 machines, and /dev/console as the last console=). Keep that
# order: with console=ttyS1 first, Debian's kernel resets the QEMU machine right
# after "Probing EDD" and never prints a line. The builder is the host's /bin/sh (needs
# `sandbox = false`); PATH is unset in Nix builds, hence absolute /bin paths.
{ salt ? "", links ? false, instance ? "m2.xlarge.x86" }:
let
  dir = /usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64;
  kernel = builtins.path { path = dir + "/linux"; name = "debian-12-amd64-bzImage"; };
  initrd = builtins.path { path = dir + "/initrd.gz"; name = "debian-12-amd64-initrd"; };
in
derivation {
  name = "netboot-${instance}";
  system = "x86_64-linux";
  builder = "/bin/sh";
  inherit kernel initrd salt;
  link = if links then "1" else "";
  ipxe = ''
    #!ipxe
    # ${instance} netboot image (nbship test data); salt: ${salt}
    # Use the cmdline variable to allow the user to specify custom kernel params
    # when chainloading this script from other iPXE scripts like netboot.xyz
    kernel bzImage init=/sbin/init initrd=initrd console=ttyS0,115200n8 console=ttyS1,115200n8 ''${cmdline}
    initrd initrd
    boot
  '';
  args = [ "-c" ''
    set -e
    /bin/mkdir "$out"
    if [ -n "$link" ]; then
      /bin/ln -s "$kernel" "$out/bzImage"
      /bin/ln -s "$initrd" "$out/initrd"
    else
      /bin/cp "$kernel" "$out/bzImage"
      /bin/cp "$initrd" "$out/initrd"
    fi
    printf '%s' "$ipxe" > "$out/netboot.ipxe"
  '' ];
}
