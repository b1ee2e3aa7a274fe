# Test stand-in for instance type m1.xlarge.x86: the image of m2.xlarge.x86.nix under its own name.
{ ... }@args: import ./m2.xlarge.x86.nix ({ instance = "m1.xlarge.x86"; } // args)
