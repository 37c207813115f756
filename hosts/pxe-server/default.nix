# PXE server class: proxy-DHCP, TFTP and HTTP for the netboot trees; a model-less cairn node itself.
{ lib, ... }:
let
  lan = "eth0";
  inherit (import ../lan.nix) gateway;
  address = (import ../lan.nix).pxeServer;
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
  networking.defaultGateway = lib.mkDefault gateway;
  networking.nameservers = lib.mkDefault [ gateway ];

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
    settings = import ./settings.nix // {
      # The seed joins nobody (the others join through it), so it cannot infer its address.
      gossip.advertise = address;
    };
    # Provisioned on the node, never in the flake (docs/operations.md, "Run a cluster").
    apiTokenFile = "/var/lib/cairn-secrets/api.token";
    gossipKeyFile = "/var/lib/cairn-secrets/gossip.key";
    openFirewall = true;
    # The seed: the other nodes join through this fixed address (hosts/lan.nix).
    gossip.enable = true;
  };

  system.stateVersion = "26.05";
}
