# nixpkgs' real module system over modules/ (with pxe/server.nix and disk-install.nix), from a
# lib-only snapshot such as nix-community/nixpkgs.lib (which Nix 2.8 evaluates): what
# options-doc.nix documents and settings-mirrors.nix reads `config` from. Stand-ins:
# - a declaration, of no type, for each NixOS option the modules define (the module system
#   refuses definitions of undeclared options), so a misspelt `cairn.*` or `services.cairn.*`
#   definition still fails here;
# - `pkgs` with only `formats.json`, whose `type` is nixpkgs' (pkgs/pkgs-lib/formats.nix): the
#   type of `services.cairn.settings` is described with it.
{
  # A nixpkgs or nixpkgs.lib checkout (a directory holding `lib/`).
  nixpkgsLib,
  # More modules: definitions to evaluate `config` with.
  modules ? [ ],
}:
let
  lib = import "${toString nixpkgsLib}/lib";
  inherit (lib.types)
    attrsOf
    bool
    float
    int
    listOf
    nullOr
    oneOf
    path
    str
    ;

  nixosOptions = [
    "assertions"
    "warnings"
    "boot.kernelParams"
    "boot.loader.efi.canTouchEfiVariables"
    "boot.loader.grub.configurationLimit"
    "boot.loader.grub.device"
    "boot.loader.grub.enable"
    "boot.loader.systemd-boot.configurationLimit"
    "boot.loader.systemd-boot.enable"
    "documentation.enable"
    "environment.systemPackages"
    "fileSystems"
    "fonts.fontconfig.enable"
    "networking.firewall"
    "networking.interfaces"
    "networking.useNetworkd"
    "nix.settings"
    "programs.command-not-found.enable"
    "security.polkit"
    "services.dnsmasq"
    "services.journald.settings" # modules/appliance.nix asks whether it exists
    "services.nginx"
    "services.openssh"
    "services.timesyncd.enable"
    "system.build"
    "systemd.enableEmergencyMode"
    "systemd.network.links"
    "systemd.network.networks"
    "systemd.services"
    "systemd.settings"
    "systemd.sockets"
    "systemd.tmpfiles.rules"
    "time.timeZone"
    "users.groups"
    "users.users"
  ];

  pkgs.formats.json =
    { }:
    {
      type =
        let
          valueType =
            nullOr (oneOf [
              bool
              int
              float
              str
              path
              (attrsOf valueType)
              (listOf valueType)
            ])
            // {
              description = "JSON value";
            };
        in
        valueType;
    };

in
lib.evalModules {
  modules = [
    ../../modules
    # Imported by the installed hosts only (hosts/*/installed.nix); its options are documented too.
    ../../modules/disk-install.nix
  ]
  ++ map (path: {
    options = lib.setAttrByPath (lib.splitString "." path) (lib.mkOption { });
  }) nixosOptions
  ++ modules;
  specialArgs = { inherit pkgs; };
}
