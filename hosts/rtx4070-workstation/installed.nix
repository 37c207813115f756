# The workstation installed on its disk (nixos-rebuild switch --flake .#rtx4070-workstation).
{ lib, ... }:
{
  # `nixos-generate-config --show-hardware-config > hosts/rtx4070-workstation/hardware-configuration.nix`
  # (then `git add` it) replaces the label-based defaults of modules/disk-install.nix.
  imports = [
    ../../modules/disk-install.nix
  ]
  ++ lib.optional (builtins.pathExists ./hardware-configuration.nix) ./hardware-configuration.nix;

  # A current board boots by UEFI: systemd-boot on the EFI system partition labelled `boot`.
  cairn.install.bootLoader = lib.mkDefault "systemd-boot";

  boot.initrd.availableKernelModules = [
    "nvme"
    "xhci_pci"
    "ahci"
    "usb_storage"
    "sd_mod"
  ];
}
