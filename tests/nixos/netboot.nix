# VM test: a diskless client netboots the legacy image from the pxe-server VM over iPXE (proxy-DHCP beside a router).
{ pkgs, self }:
let
  inherit (pkgs) lib;

  clientMac = "52:54:00:12:01:99";
  routerAddress = "192.168.1.1";
  serverAddress = "192.168.1.2";

  # The legacy class as shipped, plus the test driver's backdoor (on the virtio console) so the
  # script can drive the netbooted client, an operator key (the appliance refuses a host nobody
  # can log in to), and curl for the checks. Its secrets are not in the image: the script
  # provisions them on the client's second drive, as docs/first-deployment.md says.
  legacyUnderTest = self.nixosConfigurations.legacy-node.extendModules {
    modules = [
      (
        { modulesPath, pkgs, ... }:
        {
          imports = [
            (modulesPath + "/testing/test-instrumentation.nix")
            ./test-operator.nix
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

  # A bare machine: no kernel of its own, a Core 2 Duo's instruction set, and QEMU's built-in
  # iPXE option ROM; its only NIC is on the test VLAN. Its one disk (appended by the script, a
  # blank file that persists across the client's reboots) becomes the secrets volume. The driver
  # appends the serial and backdoor devices.
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

    # The client's disk: blank, like a node's spare disk or USB stick before provisioning.
    secrets_disk = os.path.join(os.environ.get("TMPDIR", "/tmp"), "client-secrets.img")
    with open(secrets_disk, "wb") as disk:
        disk.truncate(64 * 1024 * 1024)
    client = create_machine(
        f"${clientStart} -drive file={secrets_disk},format=raw,if=virtio", name="client"
    )
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

    with subtest("without its secrets volume the node boots, and the supervisor waits for it"):
        # RequiresMountsFor=/var/lib/cairn-secrets: the mount waits 10 s for the label
        # (x-systemd.device-timeout), then cairn.service's start fails on that dependency.
        client.wait_until_succeeds(
            "journalctl -b -u cairn.service --no-pager --grep='Dependency failed'", timeout=120
        )
        client.fail("systemctl is-active --quiet cairn.service")
        client.succeed("test -b /dev/vda")

    with subtest("secrets provisioned on the node's disk, as the docs do it, start the supervisor"):
        client.succeed("mkfs.ext4 -q -L cairn-secrets /dev/vda")
        client.wait_until_succeeds("test -e /dev/disk/by-label/cairn-secrets", timeout=60)
        client.succeed(
            "mountpoint -q /var/lib/cairn-secrets || mount /var/lib/cairn-secrets",
            "head -c 32 /dev/urandom | base64 > /var/lib/cairn-secrets/gossip.key",
            "head -c 24 /dev/urandom | base64 > /var/lib/cairn-secrets/api.token",
            "chmod 600 /var/lib/cairn-secrets/gossip.key /var/lib/cairn-secrets/api.token",
            "systemctl restart cairn cairn-ssh-host-keys",
        )
        client.wait_for_unit("cairn.service")
        client.wait_until_succeeds("curl -sf http://127.0.0.1:8470/readyz", timeout=300)
        # This boot's SSH host key, now saved on the volume: the one clients have recorded.
        client.succeed("test -s /var/lib/cairn-secrets/ssh-host-keys/ssh_host_ed25519_key")
        host_key = client.succeed("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]

    with subtest("from another machine, /status needs the token"):
        token = client.succeed("cat /var/lib/cairn-secrets/api.token").strip()
        address = client.succeed(
            "ip -4 -o addr show scope global | awk '{ split($4, a, \"/\"); print a[1]; exit }'"
        ).strip()
        assert address.startswith("192.168.1."), address
        url = f"http://{address}:8470/status"
        code = pxeserver.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' {url}").strip()
        assert code == "401", code
        status = pxeserver.succeed(f"curl -sf -H 'Authorization: Bearer {token}' {url}")
        assert "legacy-test-01" in status, status

    with subtest("rebooted, the node mounts its secrets and starts the supervisor by itself"):
        client.shutdown()
        client.start()
        client.wait_for_unit("cairn.service", timeout=1800)
        client.succeed("findmnt -n -o SOURCE,FSTYPE /var/lib/cairn-secrets | grep -q ext4")
        client.wait_until_succeeds("curl -sf http://127.0.0.1:8470/readyz", timeout=300)

    with subtest("rebooted, the node has the SSH host key it had before"):
        client.wait_for_unit("sshd.service")
        client.succeed("systemctl is-active --quiet cairn-ssh-host-keys.service")
        after = client.succeed("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        assert after == host_key, f"host key changed across the reboot: {host_key} -> {after}"
        # What sshd serves, not only the file: the key a client sees.
        served = client.succeed("ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | ssh-keygen -lf -")
        assert host_key in served, served

    with subtest("the proxy offer came from the boot server, the lease from the router"):
        # --grep, not `| grep -q`: grep -q exits at the first match, journalctl then dies of
        # SIGPIPE, and under the driver's `set -o pipefail` the pipeline fails. journalctl --grep
        # exits 1 when nothing matches.
        pxeserver.succeed("journalctl -u dnsmasq.service --no-pager --case-sensitive=false --grep='${clientMac}'")
        router.succeed("journalctl -u dnsmasq.service --no-pager --case-sensitive=false --grep='DHCPACK.*${clientMac}'")

    client.shutdown()
  '';
}
