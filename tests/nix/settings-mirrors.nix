# services.cairn.settings as nixpkgs' real module system merges it (eval-modules.nix), for the
# options that mirror a settings key and for a model left at its defaults; read by
# test_settings_mirrors.py (`NIXPKGS_LIB=<nixpkgs.lib checkout>`).
{
  # A nixpkgs or nixpkgs.lib checkout (a directory holding `lib/`).
  nixpkgsLib,
}:
let
  settings =
    cairn:
    (import ./eval-modules.nix {
      inherit nixpkgsLib;
      modules = [ { services.cairn = { enable = true; } // cairn; } ];
    }).config.services.cairn.settings;

  mirrors = {
    heal.confirmWindow = 300;
    heal.criticalUnits = [ "a.service" ];
    gossip = {
      enable = true;
      port = 9000;
      join = [ "10.0.0.1" ];
    };
    gossipKeyFile = "/var/lib/cairn-secrets/gossip.key";
    apiTokenFile = "/var/lib/cairn-secrets/api.token";
  };
in
{
  # Each mirror option alone: its value lands in settings.
  mirrors = settings mirrors;
  # The same, and every mirrored key also set in settings directly: the direct value wins.
  direct = settings (
    mirrors
    // {
      settings = {
        heal.confirm_window = 60;
        heal.critical_units = [ "b.service" ];
        gossip = {
          port = 9100;
          join = [ "10.0.0.2" ];
          profile = "wan";
          key_file = "/etc/cairn/gossip.key";
        };
        api.token_file = "/etc/cairn/api.token";
      };
    }
  );
  # A model with only its file: every other key is the module's default.
  model = settings { models.tiny.file = "/var/lib/models/tiny.gguf"; };
}
