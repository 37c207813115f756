# PXE server class: proxy-DHCP, TFTP and HTTP for the netboot trees; a model-less cairn node itself.
{ lib, ... }:
let
  lan = "eth0";
  address = "192.168.1.2";
in
{
  networking.hostName = lib.mkDefault "cairn-pxe";
  # One NIC, and the boot server must know its name before the hardware is seen.
  networking.usePredictableInterfaceNames = lib.mkDefault false;

  # A fixed address: every iPXE script names it. Adjust to your LAN.
  networking.interfaces.${lan}.ipv4.addresses = [
    {
      inherit address;
      prefixLength = 24;
    }
  ];
  networking.defaultGateway = lib.mkDefault "192.168.1.1";
  networking.nameservers = lib.mkDefault [ "192.168.1.1" ];

  cairn.appliance.enable = true;

  # cairn.pxe.classes is filled by flake.nix from the netbooted host classes.
  cairn.pxe = {
    enable = true;
    interface = lan;
    subnet = "192.168.1.0";
    inherit address;
    hosts = import ./machines.nix;
    defaultClass = "legacy-node";
    openFirewall = true;
  };

  services.cairn = {
    enable = true;
    settings = import ./settings.nix;
    # Provisioned on the node, never in the flake (docs/operations.md, "Run a cluster").
    apiTokenFile = "/var/lib/cairn-secrets/api.token";
    openFirewall = true;
  };

  system.stateVersion = "26.05";
}
