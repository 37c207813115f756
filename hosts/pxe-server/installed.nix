# The PXE server installed on its disk (nixos-rebuild switch --flake .#pxe-server).
{ lib, ... }:
{
  # `nixos-generate-config --show-hardware-config > hosts/pxe-server/hardware-configuration.nix`
  # (then `git add` it) replaces the label-based defaults of modules/disk-install.nix.
  imports = [
    ../../modules/disk-install.nix
  ]
  ++ lib.optional (builtins.pathExists ./hardware-configuration.nix) ./hardware-configuration.nix;

  boot.initrd.availableKernelModules = [
    "ahci"
    "xhci_pci"
    "usb_storage"
    "sd_mod"
  ];
}
