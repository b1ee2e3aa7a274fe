# Test stand-in for a NixOS netboot image of instance type c2.large.arm
# (aarch64-linux): Debian's arm64 installer kernel and initrd as Image, initrd
# and netboot.ipxe (netboot.nix builds it).
#
#   instance  the instance type it stands for (the other arm files import
#          this one with their own name).
#   salt   any string; it lands in netboot.ipxe, so a new salt forces a new build.
#   links  true: Image and initrd are symlinks to their source store paths (as in
#          a real NixOS netboot output, whose files point into other store paths);
#          false (default): plain copies.
{ salt ? "", links ? false, instance ? "c2.large.arm" }:
import ./netboot.nix {
  inherit instance salt links;
  system = "aarch64-linux";
  debArch = "arm64";
  kernel = "Image";
  console = "console=ttyAMA0,115200";
}
