# Supervisor settings of a legacy node (Core 2 Duo, 2 cores, netbooted); services.cairn.settings.
{
  version = 1;
  # node.name is left out: each node takes its hostname (hostname= on the kernel command line).
  node.state_dir = "/var/lib/cairn";
  # Peers route requests to this node's API, so it listens on the LAN (firewall: openFirewall).
  api = {
    host = "0.0.0.0";
    port = 8470;
    # A network client must send this token (services.cairn.apiTokenFile puts it there).
    token_file = "/run/credentials/cairn.service/api-token";
  };
  probe = {
    # The default period: sampling costs little, but this node has one housekeeping core.
    interval = 5.0;
    nix_profiles = "/nix/var/nix/profiles";
  };
  log.level = "info";
}
