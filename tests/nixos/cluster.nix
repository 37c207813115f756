# VM test: three nodes gossip through the firewall, converge, and heal a partition.
{ pkgs, self }:
let
  node =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;
      # A fixed test key, in the store: fine for a throwaway VM, never for a real node.
      environment.etc."cairn-test/gossip.key".text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
      services.cairn = {
        enable = true;
        openFirewall = true;
        gossipKeyFile = "/etc/cairn-test/gossip.key";
        gossip = {
          enable = true;
          join = [ "node1" ];
        };
        settings = {
          version = 1;
          probe.interval = 1.0;
        };
      };
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
    };
in
pkgs.testers.runNixOSTest {
  name = "cairn-cluster";

  nodes = {
    node1 = node;
    node2 = node;
    node3 = node;
  };

  testScript = ''
    nodes = [node1, node2, node3]
    status = "curl -sf http://127.0.0.1:8470/status"

    def alive_count(n):
        return f"{status} | jq -e '[.cluster[] | select(.state == \"alive\")] | length == {n}'"

    start_all()
    for m in nodes:
        m.wait_for_unit("cairn.service")

    with subtest("three nodes converge through the opened firewall"):
        for m in nodes:
            m.wait_until_succeeds(alive_count(3), timeout=120)
        node1.succeed(f"{status} | jq -e '.cluster[] | select(.name == \"node2\") | .digest.api_port == 8470'")

    with subtest("a partitioned node is suspected, then rejoins and refutes"):
        node3.block()
        for m in (node1, node2):
            m.wait_until_succeeds(
                f"{status} | jq -e '.cluster[] | select(.name == \"node3\") | .state != \"alive\"'",
                timeout=60,
            )
        node3.unblock()
        for m in nodes:
            m.wait_until_succeeds(alive_count(3), timeout=120)
        node1.succeed(f"{status} | jq -e '.cluster[] | select(.name == \"node3\") | .incarnation > 0'")

    with subtest("the daemon reads its key from its credentials directory"):
        node1.succeed("test -s /run/credentials/cairn.service/gossip-key")
        node1.succeed("journalctl -u cairn.service --no-pager --grep='gossip on 0.0.0.0:8471 as node1'")
  '';
}
