// Package image checks netboot images against their instance type and
// publishes them on the PXE host as generations, switched atomically.
//
// An instance type (Profile) has a slot, PXEDIR/hydra-INSTANCE, from which
// booting machines fetch netboot.ipxe and then the kernel and initrd it
// names. nbship keeps every published image as a generation and makes the
// slot a relative symlink to the current one:
//
//	PXEDIR/
//	  hydra-c2.large.arm -> .nbship/generations/c2.large.arm/000042-20261126T223000Z
//	  .nbship/
//	    locks/c2.large.arm.lock                   flock: one publish at a time
//	    generations/c2.large.arm/
//	      000041-20261125T101500Z/                Image initrd netboot.ipxe
//	      000041-20261125T101500Z.sums            SHA-256 of its files, for Have
//	      000042-20261126T223000Z/
//	      000042-20261126T223000Z.sums
//	      .staging-1234567890/                    being received (Stage)
//	      .trash-000038-…/                        being removed (GC)
//	  .hydra-c2.large.arm.tmp-1a2b3c4d            the next symlink, for a moment
//	  .hydra-c2.large.arm.adopted-000001-…/       a plain hydra-c2.large.arm the old
//	                                              scripts left, kept where it was
//	                                              adopted; generations/…/000001-… links
//	                                              to it
//
// A generation's name is a counter, one more than any before it in the slot,
// and the UTC time it was published: it sorts, and it is unique because it
// is chosen under the slot's lock. Generations are never changed once
// published; later ones may share files with them through hard links.
//
// Publishing renames the staged directory to its generation name, makes a
// new symlink beside the slot and renames it over the slot: one rename(2),
// so every request sees the complete old or the complete new generation.
// The symlink target is relative so that nginx, chroots and bind mounts
// resolve it wherever pxeDir is mounted. A machine that fetches the script
// just before a switch and the kernel just after gets files of two
// generations; the window is as long as a boot's fetches.
package image
