# Test-only secrets, in the store (never on a real node): the API token the hosts' settings need,
# and an operator key (test-operator.nix) so the appliance's SSH check passes.
{ lib, ... }:
{
  imports = [ ./test-operator.nix ];
  environment.etc."cairn-test/api.token".text = "vm-test-token-0123456789\n";
  # mkForce: the hosts point at /var/lib/cairn-secrets, which a throwaway VM does not have.
  services.cairn.apiTokenFile = lib.mkForce "/etc/cairn-test/api.token";
}
