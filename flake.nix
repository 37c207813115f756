# Cairn's flake: NixOS systems for every host class, netboot images, the cairn package.
{
  description = "Cairn: a self-running inference cluster of NixOS nodes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  # Outputs (packages, nixosModules, nixosConfigurations, checks, formatter) are built by the
  # Nix flake work that follows the foundation; until then the supervisor runs with `make run`.
  outputs = _: { };
}
