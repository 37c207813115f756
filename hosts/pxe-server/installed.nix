# The PXE server installed on its disk (nixos-rebuild switch --flake .#pxe-server).
{ lib, ... }:
{
  # `nixos-generate-config --show-hardware-config > hosts/pxe-server/hardware-configuration.nix`
  # (then `git add` it) replaces the label-based defaults of modules/disk-install.nix.
  imports = [
    ../../modules/disk-install.nix
  ]
  ++ lib.optional (builtins.pathExists ./hardware-configuration.nix) ./hardware-configuration.nix;

  # Most likely one of the Core 2 Duos, whose firmware is a BIOS: GRUB in the boot sector of its
  # only disk. A UEFI machine: bootLoader = "systemd-boot" (docs/first-deployment.md, step 3).
  cairn.install = {
    bootLoader = lib.mkDefault "grub";
    grubDevice = lib.mkDefault "/dev/sda";
  };

  boot.initrd.availableKernelModules = [
    "ahci"
    "ata_piix"
    "xhci_pci"
    "ehci_pci"
    "usb_storage"
    "sd_mod"
  ];
}
