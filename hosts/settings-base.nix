# Supervisor settings every host class shares (services.cairn.settings): a plain attrset that
# each hosts/<class>/settings.nix imports and extends with what differs for its class.
{
  version = 1;
  # node.name is left out: each node takes its hostname at run time (a netbooted one from
  # hostname= on the kernel command line).
  node.state_dir = "/var/lib/cairn";
  # Every node listens on the LAN: peers route requests to its API and operators read its status
  # (firewall: services.cairn.openFirewall).
  api = {
    host = "0.0.0.0";
    port = 8470;
    # A network client must send this token (services.cairn.apiTokenFile puts it there).
    token_file = "/run/credentials/cairn.service/api-token";
  };
  probe.nix_profiles = "/nix/var/nix/profiles";
  log.level = "info";
}
