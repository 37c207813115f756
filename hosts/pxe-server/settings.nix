# Supervisor settings of the PXE boot server (runs no models); services.cairn.settings.
{
  version = 1;
  # node.name is left out: the node takes its hostname at run time.
  node.state_dir = "/var/lib/cairn";
  # Listens on the LAN like every node, so peers and operators can read its status.
  api = {
    host = "0.0.0.0";
    port = 8470;
    # A network client must send this token (services.cairn.apiTokenFile puts it there).
    token_file = "/run/credentials/cairn.service/api-token";
  };
  probe = {
    # No inference load to follow here; a slower period is enough.
    interval = 10.0;
    nix_profiles = "/nix/var/nix/profiles";
  };
  log.level = "info";
}
