# Test stand-in for a NixOS netboot image of instance type m2.xlarge.x86
# (x86_64-linux): Debian's amd64 installer kernel and initrd as bzImage, initrd
# and netboot.ipxe (netboot.nix builds it).
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
# after "Probing EDD" and never prints a line.
{ salt ? "", links ? false, instance ? "m2.xlarge.x86" }:
import ./netboot.nix {
  inherit instance salt links;
  system = "x86_64-linux";
  debArch = "amd64";
  kernel = "bzImage";
  console = "console=ttyS0,115200n8 console=ttyS1,115200n8";
}
