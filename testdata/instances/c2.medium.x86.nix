# Test stand-in for instance type c2.medium.x86: the image of m2.xlarge.x86.nix under its own name.
{ ... }@args: import ./m2.xlarge.x86.nix ({ instance = "c2.medium.x86"; } // args)
