# Every Cairn NixOS module; each is inert until its `enable` is set.
{
  imports = [
    ./appliance.nix
    ./tuning.nix
    ./supervisor.nix
    ./inference.nix
    ../pxe/server.nix
  ];
}
