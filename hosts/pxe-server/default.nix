# PXE server class: proxy-DHCP, TFTP and HTTP for the netboot trees; a model-less cairn node itself.
{ lib, ... }:
let
  # The LAN's values (subnet, prefix, gateway, this server's address): hosts/lan.nix, one place.
  lan = import ../lan.nix;
  address = lan.pxeServer;
  # One NIC, named by the kernel (usePredictableInterfaceNames below), so the name is known
  # before the hardware is seen and nothing here needs editing per machine.
  nic = "eth0";
in
{
  networking.hostName = lib.mkDefault "cairn-pxe";
  # net.ifnames=0 on the kernel command line: it takes effect at the next boot, not at a switch
  # (udev renames a NIC only when it appears). Hence the first deploy is `nixos-rebuild boot`
  # and a reboot (docs/first-deployment.md, step 5): switched live, nothing would be called
  # eth0 yet, and the fixed address and dnsmasq would wait for that reboot. With two NICs, turn
  # this on and set `nic` to the name `ip -br link` shows (the build checks that they agree).
  networking.usePredictableInterfaceNames = lib.mkDefault false;

  # A fixed address: every iPXE script names it. Until the first boot of this configuration
  # the machine has the address the router leased it (docs/first-deployment.md, step 5).
  networking.interfaces.${nic}.ipv4.addresses = [
    {
      inherit address;
      inherit (lan) prefixLength;
    }
  ];
  # Under networkd (cairn.appliance turns it on) nixpkgs requires the gateway's interface.
  networking.defaultGateway = lib.mkDefault {
    address = lan.gateway;
    interface = nic;
  };
  networking.nameservers = lib.mkDefault lan.nameservers;

  # hosts/lan.nix is checked here, where it is used: a typo fails the build, naming the key.
  assertions = map (message: {
    assertion = false;
    inherit message;
  }) ((import ../../modules/lib).network.lanProblems lan);

  cairn.appliance = {
    enable = true;
    sshKeys = import ../ssh-keys.nix;
  };

  # cairn.pxe.classes is filled by flake.nix from the classes listed in ./classes.nix.
  cairn.pxe = {
    enable = true;
    interface = nic;
    inherit (lan) subnet;
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
