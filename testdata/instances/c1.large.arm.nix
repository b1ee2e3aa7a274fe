# Test stand-in for instance type c1.large.arm: the image of c2.large.arm.nix under its own name.
{ ... }@args: import ./c2.large.arm.nix ({ instance = "c1.large.arm"; } // args)
