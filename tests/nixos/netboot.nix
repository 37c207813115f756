# VM test: a diskless client netboots the legacy image from the pxe-server VM over iPXE (proxy-DHCP beside a router).
{ pkgs, self }:
let
  inherit (pkgs) lib;

  clientMac = "52:54:00:12:01:99";
  routerAddress = "192.168.1.1";
  serverAddress = "192.168.1.2";

  # The legacy class as shipped, plus the test driver's backdoor (on the virtio console) so the
  # script can drive the netbooted client, and curl for the checks.
  legacyUnderTest = self.nixosConfigurations.legacy-node.extendModules {
    modules = [
      (
        { modulesPath, pkgs, ... }:
        {
          imports = [
            (modulesPath + "/testing/test-instrumentation.nix")
            ./test-secrets.nix
          ];
          environment.systemPackages = [ pkgs.curl ];
        }
      )
    ];
  };

  staticAddress = address: {
    networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
      {
        inherit address;
        prefixLength = 24;
      }
    ];
  };

  # A bare machine: no disk, no kernel of its own, a Core 2 Duo's instruction set, and QEMU's
  # built-in iPXE option ROM; its only NIC is on the test VLAN. The driver appends the serial
  # and backdoor devices.
  clientStart = lib.concatStringsSep " " [
    "${pkgs.qemu_test}/bin/qemu-system-x86_64"
    "-machine pc,accel=kvm:tcg"
    "-cpu core2duo"
    "-smp 2"
    "-m 4096"
    "-netdev vde,id=vlan1,sock=$QEMU_VDE_SOCKET_1"
    "-device virtio-net-pci,netdev=vlan1,mac=${clientMac}"
    "-boot order=n"
  ];
in
pkgs.testers.runNixOSTest {
  name = "cairn-netboot";

  # The LAN's router: plain DHCP, knows nothing about PXE.
  nodes.router = {
    imports = [ (staticAddress routerAddress) ];
    virtualisation.vlans = [ 1 ];
    networking.firewall.allowedUDPPorts = [ 67 ];
    services.dnsmasq = {
      enable = true;
      resolveLocalQueries = false;
      settings = {
        port = 0;
        interface = "eth1";
        bind-interfaces = true;
        dhcp-range = [ "192.168.1.100,192.168.1.200,1h" ];
        log-dhcp = true;
      };
    };
  };

  nodes.pxeserver =
    { config, pkgs, ... }:
    {
      imports = [
        self.nixosModules.default
        (staticAddress serverAddress)
      ];
      virtualisation.vlans = [ 1 ];
      virtualisation.memorySize = 2048;
      # nix-env only publishes store paths the VM's Nix database knows.
      virtualisation.additionalPaths = [ config.cairn.pxe.tree ];

      cairn.pxe = {
        enable = true;
        interface = "eth1";
        subnet = "192.168.1.0";
        address = serverAddress;
        openFirewall = true;
        hosts.legacy-test-01 = {
          mac = clientMac;
          class = "legacy-node";
        };
        classes.legacy-node = legacyUnderTest.config.system.build.cairnNetboot;
      };

      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    start_all()
    router.wait_for_unit("dnsmasq.service")
    pxeserver.wait_for_unit("cairn-pxe-publish.service")
    pxeserver.wait_for_unit("dnsmasq.service")
    pxeserver.wait_for_unit("nginx.service")
    pxeserver.wait_for_open_port(80, "127.0.0.1")

    with subtest("the server publishes the tree as a profile generation"):
        pxeserver.succeed("curl -sf http://127.0.0.1/entry.ipxe | grep -q '^#!ipxe'")
        script = pxeserver.succeed("curl -sf 'http://127.0.0.1/boot/${
          lib.replaceStrings [ ":" ] [ "%3A" ] clientMac
        }.ipxe'")
        assert "hostname=legacy-test-01" in script, script
        pxeserver.succeed("curl -sfI http://127.0.0.1/legacy-node/bzImage")
        pxeserver.succeed("cairn-pxe list | grep -q current")

    client = create_machine("${clientStart}")
    client.start()

    with subtest("the client boots its own iPXE script"):
        client.wait_for_unit("multi-user.target", timeout=1800)
        cmdline = client.succeed("cat /proc/cmdline").split()
        for param in [
            "hostname=legacy-test-01",
            "isolcpus=domain,managed_irq,1",
            "nohz_full=1",
            "rcu_nocbs=1",
            "irqaffinity=0",
        ]:
            assert param in cmdline, f"{param} not in {cmdline}"
        name = client.succeed("cat /proc/sys/kernel/hostname").strip()
        assert name == "legacy-test-01", name
        client.succeed("findmnt -n -o FSTYPE / | grep -qx tmpfs")

    with subtest("the supervisor runs on the netbooted node"):
        client.wait_for_unit("cairn.service")
        client.wait_until_succeeds("curl -sf http://127.0.0.1:8470/readyz", timeout=300)

    with subtest("the proxy offer came from the boot server, the lease from the router"):
        # --grep, not `| grep -q`: grep -q exits at the first match, journalctl then dies of
        # SIGPIPE, and under the driver's `set -o pipefail` the pipeline fails. journalctl --grep
        # exits 1 when nothing matches.
        pxeserver.succeed("journalctl -u dnsmasq.service --no-pager --case-sensitive=false --grep='${clientMac}'")
        router.succeed("journalctl -u dnsmasq.service --no-pager --case-sensitive=false --grep='DHCPACK.*${clientMac}'")

    client.shutdown()
  '';
}
