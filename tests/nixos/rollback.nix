# VM test: switching into a broken specialisation is rolled back to the confirmed generation.
{ pkgs, self }:
pkgs.testers.runNixOSTest {
  name = "cairn-rollback";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];

      virtualisation.memorySize = 2048;

      services.cairn = {
        enable = true;
        settings = {
          node.state_dir = "/var/lib/cairn";
          probe.interval = 1.0;
        };
        heal = {
          confirmWindow = 20;
          criticalUnits = [ "worker.service" ];
        };
      };

      # The service this node exists for; the specialisation below breaks it.
      systemd.services.worker = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };
      specialisation.broken.configuration = {
        systemd.services.worker.serviceConfig.ExecStart = lib.mkForce "${pkgs.coreutils}/bin/false";
      };

      # The VM boots its kernel directly and has no bootloader to install: without this,
      # `switch-to-configuration switch` (the helper's, and the test's) stops at that step.
      system.build.installBootLoader = lib.mkForce "${pkgs.coreutils}/bin/true";

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
    };

  testScript = ''
    profiles = "/nix/var/nix/profiles"

    def gate(query):
        return machine.succeed(f"curl -sf http://127.0.0.1:8470/status | jq -c '.gate | {query}'").strip()

    machine.wait_for_unit("cairn.service")
    machine.wait_for_unit("worker.service")

    with subtest("the running system, made generation 1 as an install would, is confirmed"):
        machine.succeed(
            f"mkdir -p {profiles}",
            f"ln -s $(readlink -f /run/current-system) {profiles}/system-1-link",
            f"ln -s system-1-link {profiles}/system",
        )
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:8470/status | jq -e '.gate.confirmed == [1]'", timeout=60
        )

    with subtest("switching into the broken specialisation is rolled back"):
        machine.succeed(
            f"ln -s $(readlink -f /run/current-system/specialisation/broken) {profiles}/system-2-link",
            f"ln -sfn system-2-link {profiles}/system",
        )
        # Like nixos-rebuild: the switch reports the unit that failed to start.
        machine.execute(f"{profiles}/system/bin/switch-to-configuration switch")
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:8470/status"
            " | jq -e '.gate.current == 1 and .gate.bad == [2] and .gate.status == \"confirmed\"'",
            timeout=60,
        )
        assert machine.succeed(f"readlink {profiles}/system").strip() == "system-1-link"
        machine.wait_for_unit("worker.service")
        machine.succeed("journalctl -u cairn-rollback.service --grep='switching the system profile to generation 1'")

    with subtest("the bad generation is never rolled back to, and generations lists it"):
        machine.fail("cairn rollback 2")
        listing = machine.succeed("cairn generations")
        print(listing)
        assert "bad" in listing.splitlines()[2], listing
  '';
}
