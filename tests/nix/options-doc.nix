# docs/options.md without nixpkgs: modules/ evaluated with nixpkgs' real module system (a lib-only
# snapshot such as nix-community/nixpkgs.lib, which Nix 2.8 evaluates; the stand-ins are in
# eval-modules.nix), rendered by modules/lib/options-doc.nix like the flake's `options-md`.
# `make options-doc NIXPKGS_LIB=...`. Only the option declarations are read, never `config`.
{
  # A nixpkgs or nixpkgs.lib checkout (a directory holding `lib/`).
  nixpkgsLib,
}:
let
  lib = import "${toString nixpkgsLib}/lib";
  inherit (import ./eval-modules.nix { inherit nixpkgsLib; }) options;
in
(import ../../modules/lib).optionsDoc.render (
  lib.optionAttrSetToDocList {
    inherit (options) cairn;
    services = { inherit (options.services) cairn; };
  }
)
