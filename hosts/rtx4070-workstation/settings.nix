# Supervisor settings of the RTX 4070 workstation (20 cores, installed); services.cairn.settings.
{
  version = 1;
  # node.name is left out: the node takes its hostname at run time.
  node.state_dir = "/var/lib/cairn";
  # Peers route requests to this node's API, so it listens on the LAN (firewall: openFirewall).
  api = {
    host = "0.0.0.0";
    port = 8470;
    # A network client must send this token (services.cairn.apiTokenFile puts it there).
    token_file = "/run/credentials/cairn.service/api-token";
  };
  probe = {
    # Sampled more often than the default: GPU load and temperature move fast under inference,
    # and this host has spare housekeeping cores.
    interval = 2.0;
    nix_profiles = "/nix/var/nix/profiles";
  };
  log.level = "info";
}
