# VM test: a node with the Cairn modules boots with isolated cores, a ready supervisor, and its polkit rule.
{ pkgs, self }:
pkgs.testers.runNixOSTest {
  name = "cairn-node";

  nodes.machine =
    { lib, pkgs, ... }:
    let
      sleeper = {
        serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
      };
    in
    {
      imports = [
        self.nixosModules.default
        ./test-secrets.nix
      ];

      # The legacy node's shape: two cores, core 1 isolated.
      virtualisation.cores = 2;
      virtualisation.memorySize = 2048;

      cairn.appliance.enable = true;
      cairn.tuning = {
        enable = true;
        cpuCount = 2;
        isolatedCores = "1";
      };
      services.cairn = {
        enable = true;
        # The legacy class's real settings; a faster probe so /readyz turns 200 sooner.
        settings = lib.recursiveUpdate (import ../../hosts/legacy-node/settings.nix) {
          probe.interval = 1.0;
        };
      };

      # Stand-ins for a model worker (the supervisor may start it) and a foreign unit (it may not).
      systemd.services."cairn-model@" = sleeper;
      systemd.services.not-cairn = sleeper;
      # Exact names only: the module allows cairn-model@ names for declared models alone.
      services.cairn.managedUnits."cairn-model@probe.service" = [
        "start"
        "stop"
      ];

      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    import json

    machine.wait_for_unit("cairn.service")

    with subtest("cairn.service is a notify unit with a watchdog, run as cairn"):
        def prop(name):
            return machine.succeed(f"systemctl show cairn.service --property={name} --value").strip()

        assert prop("Type") == "notify", prop("Type")
        assert prop("User") == "cairn", prop("User")
        assert prop("WatchdogUSec") == "30s", prop("WatchdogUSec")
        assert prop("NotifyAccess") == "main", prop("NotifyAccess")

    with subtest("/readyz answers 200 once the first probe is in"):
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:8470/readyz", timeout=120)
        ready = json.loads(machine.succeed("curl -sf http://127.0.0.1:8470/readyz"))
        assert ready["ready"], ready
        status = json.loads(machine.succeed("curl -sf http://127.0.0.1:8470/status"))
        assert status["probe"]["disk"]["path"] == "/var/lib/cairn", status["probe"]["disk"]

    with subtest("the isolation parameters are on the kernel command line"):
        cmdline = machine.succeed("cat /proc/cmdline").split()
        for param in [
            "isolcpus=domain,managed_irq,1",
            "nohz_full=1",
            "rcu_nocbs=1",
            "irqaffinity=0",
        ]:
            assert param in cmdline, f"{param} not in {cmdline}"
        isolated = machine.succeed("cat /sys/devices/system/cpu/isolated").strip()
        assert isolated == "1", isolated

    with subtest("systemd keeps units on the housekeeping core"):
        pid = machine.succeed("systemctl show cairn.service --property=MainPID --value").strip()
        machine.succeed(f"grep -E '^Cpus_allowed_list:\\s+0$' /proc/{pid}/status")
        machine.succeed("grep -E '^Cpus_allowed_list:\\s+0$' /proc/1/status")

    with subtest("polkit lets user cairn manage its own units only"):
        machine.succeed("runuser -u cairn -- systemctl start cairn-model@probe.service")
        machine.wait_for_unit("cairn-model@probe.service")
        machine.succeed("runuser -u cairn -- systemctl stop cairn-model@probe.service")
        machine.fail("runuser -u cairn -- systemctl start not-cairn.service")
        machine.fail("runuser -u cairn -- systemd-run --unit=cairn-model@pwn.service true")
        machine.fail("runuser -u nobody -- systemctl start cairn-model@probe.service")

    with subtest("the supervisor logs to the journal"):
        # --grep, not `| grep -q`: grep -q exits at the first match, journalctl then dies of
        # SIGPIPE, and under the driver's `set -o pipefail` the pipeline fails. journalctl --grep
        # exits 1 when nothing matches.
        machine.succeed("journalctl -u cairn.service --no-pager --grep='serving on http://'")
  '';
}
