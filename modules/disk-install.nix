# Installed on a local disk: the boot loader the firmware needs (GRUB on a BIOS machine,
# systemd-boot on UEFI), root (and the EFI system partition) found by filesystem label.
{ config, lib, ... }:
let
  inherit (lib) mkDefault mkIf mkMerge mkOption types;
  cfg = config.cairn.install;
in
{
  options.cairn.install = {
    bootLoader = mkOption {
      type = types.enum [
        "grub"
        "systemd-boot"
      ];
      example = "grub";
      description = ''
        Boot loader of this installed host, chosen by how its firmware boots: `"grub"` for a
        BIOS (legacy) machine, such as a Core 2 Duo desktop, installed into the disk's boot
        sector ({option}`cairn.install.grubDevice`), with `/boot` on the root file system;
        `"systemd-boot"` for a UEFI machine, with the EFI system partition labelled `boot`
        mounted at `/boot`. `ls /sys/firmware/efi` on the installer succeeds only when it was
        booted by UEFI. No default: a wrong guess leaves an unbootable disk.
      '';
    };

    grubDevice = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/dev/disk/by-id/ata-ST3250310AS_6RY5ABCD";
      description = ''
        Whole disk (not a partition) whose boot sector GRUB is installed into, for
        {option}`cairn.install.bootLoader` `"grub"`. A `/dev/disk/by-id/` name survives disks
        being added; `/dev/sda` works on a machine with one disk.
      '';
    };
  };

  config = mkMerge [
    {
      assertions = [
        {
          assertion = cfg.bootLoader == "grub" -> cfg.grubDevice != null;
          message = "cairn.install.grubDevice: must name the disk GRUB is installed on (e.g. \"/dev/sda\") when cairn.install.bootLoader is \"grub\"";
        }
        {
          assertion = cfg.bootLoader == "systemd-boot" -> cfg.grubDevice == null;
          message = "cairn.install.grubDevice: set, but cairn.install.bootLoader is \"systemd-boot\", which installs no GRUB; remove it, or choose \"grub\" for a BIOS machine";
        }
      ];

      # Label-based defaults until the host adds its hardware-configuration.nix.
      fileSystems."/" = mkDefault {
        device = "/dev/disk/by-label/nixos";
        fsType = "ext4";
      };
    }

    (mkIf (cfg.bootLoader == "grub") {
      boot.loader.grub = {
        enable = true;
        device = mkIf (cfg.grubDevice != null) cfg.grubDevice;
      };
    })

    (mkIf (cfg.bootLoader == "systemd-boot") {
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = mkDefault true;
      fileSystems."/boot" = mkDefault {
        device = "/dev/disk/by-label/boot";
        fsType = "vfat";
        options = [
          "fmask=0077"
          "dmask=0077"
        ];
      };
    })
  ];
}
