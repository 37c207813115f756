# Cases for modules/lib/network.nix: IPv4 parsing, hosts/lan.nix, networkd's gateway shape for
# every host in hosts/, and which ports wake on LAN.
let
  inherit (import ../../modules/lib) network;
  hosts = import ./hosts.nix;
  byName = builtins.listToAttrs (
    map (h: {
      inherit (h) name;
      value = h;
    }) hosts
  );
  lan = import ../../hosts/lan.nix;
  goodLan = {
    subnet = "192.168.1.0";
    prefixLength = 24;
    gateway = "192.168.1.1";
    pxeServer = "192.168.1.2";
    nameservers = [ "192.168.1.1" ];
  };
in
[
  # parseIPv4
  {
    name = "network.parseIPv4: a dotted quad";
    expr = network.parseIPv4 "192.168.1.2";
    expected = [
      192
      168
      1
      2
    ];
  }
  {
    name = "network.parseIPv4: refuses an octet over 255";
    expr = network.parseIPv4 "192.168.1.256";
    expected = null;
  }
  {
    name = "network.parseIPv4: refuses a leading zero";
    expr = network.parseIPv4 "192.168.01.2";
    expected = null;
  }
  {
    name = "network.parseIPv4: refuses a CIDR suffix and a non-string";
    expr = [
      (network.parseIPv4 "192.168.1.0/24")
      (network.parseIPv4 42)
    ];
    expected = [
      null
      null
    ];
  }

  # lanProblems
  {
    name = "network.lanProblems: the shipped hosts/lan.nix is sound";
    expr = network.lanProblems lan;
    expected = [ ];
  }
  {
    name = "network.lanProblems: a sound /24";
    expr = network.lanProblems goodLan;
    expected = [ ];
  }
  {
    name = "network.lanProblems: a /16 with the server in another /24";
    expr = network.lanProblems (
      goodLan
      // {
        subnet = "10.0.0.0";
        prefixLength = 16;
        gateway = "10.0.0.1";
        pxeServer = "10.0.7.2";
        nameservers = [ "1.1.1.1" ];
      }
    );
    expected = [ ];
  }
  {
    name = "network.lanProblems: names each missing key";
    expr = network.lanProblems { subnet = "192.168.1.0"; };
    expected = [
      "hosts/lan.nix: prefixLength: missing (it needs subnet, prefixLength, gateway, pxeServer and nameservers)"
      "hosts/lan.nix: gateway: missing (it needs subnet, prefixLength, gateway, pxeServer and nameservers)"
      "hosts/lan.nix: pxeServer: missing (it needs subnet, prefixLength, gateway, pxeServer and nameservers)"
      "hosts/lan.nix: nameservers: missing (it needs subnet, prefixLength, gateway, pxeServer and nameservers)"
    ];
  }
  {
    name = "network.lanProblems: a server outside the subnet";
    expr = network.lanProblems (goodLan // { pxeServer = "192.168.2.2"; });
    expected = [ "hosts/lan.nix: pxeServer: 192.168.2.2 is outside 192.168.1.0/24" ];
  }
  {
    name = "network.lanProblems: a subnet with host bits";
    expr = network.lanProblems (goodLan // { subnet = "192.168.1.1"; });
    expected = [
      "hosts/lan.nix: subnet: 192.168.1.1 has host bits set under /24; the network address is expected"
    ];
  }
  {
    name = "network.lanProblems: a netmask where the prefix length goes";
    expr = network.lanProblems (goodLan // { prefixLength = "255.255.255.0"; });
    expected = [
      "hosts/lan.nix: prefixLength: '255.255.255.0' is not a prefix length from 8 to 30 (24 for a 255.255.255.0 netmask)"
    ];
  }
  {
    name = "network.lanProblems: the broadcast address as the server";
    expr = network.lanProblems (goodLan // { pxeServer = "192.168.1.255"; });
    expected = [
      "hosts/lan.nix: pxeServer: 192.168.1.255 is the network or the broadcast address of 192.168.1.0/24"
    ];
  }
  {
    name = "network.lanProblems: the server on the gateway's address";
    expr = network.lanProblems (goodLan // { pxeServer = "192.168.1.1"; });
    expected = [
      "hosts/lan.nix: pxeServer: 192.168.1.1 is the gateway's address; the PXE server needs an address of its own"
    ];
  }
  {
    name = "network.lanProblems: nameservers as one string, and a bad address";
    expr = [
      (network.lanProblems (goodLan // { nameservers = "192.168.1.1"; }))
      (network.lanProblems (goodLan // { nameservers = [ "router.lan" ]; }))
    ];
    expected = [
      [
        "hosts/lan.nix: nameservers: expected a list of addresses like [ \"192.168.1.1\" ], got '192.168.1.1'"
      ]
      [ "hosts/lan.nix: nameservers: 'router.lan' is not an IPv4 address" ]
    ];
  }
  {
    name = "network.lanProblems: not an attribute set";
    expr = network.lanProblems "192.168.1.0/24";
    expected = [
      "hosts/lan.nix: expected an attribute set { subnet; prefixLength; gateway; pxeServer; nameservers; }, got '192.168.1.0/24'"
    ];
  }

  # networkdProblems
  {
    name = "network.networkdProblems: every host in hosts/ has gateways and nameservers networkd accepts";
    expr = builtins.concatMap (h: network.networkdProblems h.network) hosts;
    expected = [ ];
  }
  {
    name = "network.networkdProblems: every host in hosts/ is read (three classes, networkd on)";
    expr = map (h: {
      inherit (h) name;
      inherit (h.network) useNetworkd;
    }) hosts;
    expected = [
      {
        name = "legacy-node";
        useNetworkd = true;
      }
      {
        name = "pxe-server";
        useNetworkd = true;
      }
      {
        name = "rtx4070-workstation";
        useNetworkd = true;
      }
    ];
  }
  {
    name = "network.networkdProblems: the PXE server's gateway names its interface";
    expr = byName.pxe-server.network.defaultGateway;
    expected = {
      address = lan.gateway;
      interface = "eth0";
    };
  }
  {
    name = "network.networkdProblems: a bare gateway under networkd (the old pxe-server)";
    expr = network.networkdProblems (
      byName.pxe-server.network // { defaultGateway = lan.gateway; }
    );
    expected = [
      "hosts/pxe-server: networking.defaultGateway: a bare address ('192.168.1.1') has no interface, and under networkd (which cairn.appliance turns on) nixpkgs requires one: write { address = \"192.168.1.1\"; interface = \"eth0\"; }"
    ];
  }
  {
    name = "network.networkdProblems: a bare gateway without networkd is fine";
    expr = network.networkdProblems {
      host = "h";
      useNetworkd = false;
      defaultGateway = "10.0.0.1";
    };
    expected = [ ];
  }
  {
    name = "network.networkdProblems: an attrset gateway without interface, and an IPv6 one";
    expr = network.networkdProblems {
      host = "h";
      useNetworkd = true;
      defaultGateway = {
        address = "10.0.0.1";
        interface = null;
      };
      defaultGateway6 = "fe80::1";
    };
    expected = [
      "h: networking.defaultGateway.interface: not set, and under networkd (which cairn.appliance turns on) nixpkgs requires it"
      "h: networking.defaultGateway6: a bare address ('fe80::1') has no interface, and under networkd (which cairn.appliance turns on) nixpkgs requires one: write { address = \"fe80::1\"; interface = \"eth0\"; }"
    ];
  }
  {
    name = "network.networkdProblems: a gateway on an interface the host does not configure";
    expr = network.networkdProblems {
      host = "h";
      useNetworkd = true;
      defaultGateway = {
        address = "10.0.0.1";
        interface = "enp3s0";
      };
      interfaces.eth0 = { };
    };
    expected = [ "h: networking.defaultGateway.interface: 'enp3s0' is not among networking.interfaces (eth0)" ];
  }
  {
    name = "network.networkdProblems: nameservers as one string";
    expr = network.networkdProblems {
      host = "h";
      useNetworkd = true;
      nameservers = "10.0.0.1";
    };
    expected = [ "h: networking.nameservers: expected a list of addresses, got '10.0.0.1'" ];
  }

  # nicNameProblems
  {
    name = "network.nicNameProblems: the PXE server's NIC fits its naming (kernel names, eth0)";
    expr =
      let
        m = byName.pxe-server.module;
      in
      {
        inherit (m.cairn.pxe) interface;
        problems = network.nicNameProblems {
          where = "cairn.pxe.interface";
          name = m.cairn.pxe.interface;
          predictable = m.networking.usePredictableInterfaceNames or true;
        };
      };
    expected = {
      interface = "eth0";
      problems = [ ];
    };
  }
  {
    name = "network.nicNameProblems: eth0 under predictable names (the first switch's trap)";
    expr = network.nicNameProblems {
      where = "cairn.pxe.interface";
      name = "eth0";
      predictable = true;
    };
    expected = [
      "cairn.pxe.interface: 'eth0' is a kernel name, but networking.usePredictableInterfaceNames is on, so udev renames the NIC (enp3s0 or the like): use the name `ip -br link` shows on the machine, or turn predictable names off"
    ];
  }
  {
    name = "network.nicNameProblems: a predictable name with net.ifnames=0";
    expr = network.nicNameProblems {
      where = "cairn.pxe.interface";
      name = "enp0s25";
      predictable = false;
    };
    expected = [
      "cairn.pxe.interface: 'enp0s25' is not a kernel name, but networking.usePredictableInterfaceNames is off (net.ifnames=0), so the NICs are eth0, eth1, ...: use \"eth0\" on a machine with one NIC"
    ];
  }
  {
    name = "network.nicNameProblems: names that fit, and ones that are no interface name";
    expr = [
      (network.nicNameProblems {
        where = "w";
        name = "enp0s25";
        predictable = true;
      })
      (network.nicNameProblems {
        where = "w";
        name = "eth1";
        predictable = false;
      })
      (network.nicNameProblems {
        where = "w";
        name = "eth 0";
        predictable = false;
      })
      (network.nicNameProblems {
        where = "w";
        name = null;
        predictable = true;
      })
    ];
    expected = [
      [ ]
      [ ]
      [ "w: 'eth 0' is not a network interface name (1-15 letters, digits, '-', '_' or '.')" ]
      [ "w: a null (null) is not a network interface name (1-15 letters, digits, '-', '_' or '.')" ]
    ];
  }

  # wakeOnLan
  {
    name = "network.wakeOnLan: an interface option and a .link file";
    expr = network.wakeOnLan {
      interfaces = {
        eth0.wakeOnLan.enable = true;
        eth1.wakeOnLan.enable = false;
        eth2 = { };
      };
      links = {
        "45-cairn-wake-on-lan".linkConfig.WakeOnLan = "magic";
        "50-off".linkConfig.WakeOnLan = "off";
        "60-other".linkConfig.MTUBytes = "9000";
        "70-disabled" = {
          enable = false;
          linkConfig.WakeOnLan = "magic";
        };
      };
    };
    expected = [
      "networking.interfaces.eth0"
      "systemd.network.links.45-cairn-wake-on-lan"
    ];
  }
  {
    name = "network.wakeOnLan: nothing armed";
    expr = network.wakeOnLan { };
    expected = [ ];
  }
  {
    name = "network.wakeOnLan: the hosts that may suspend (they run models) arm it";
    expr = map (h: h.name) (
      builtins.filter (h: (h.module.cairn.appliance.wakeOnLan or { }).enable or false) hosts
    );
    expected = [
      "legacy-node"
      "rtx4070-workstation"
    ];
  }
  {
    name = "network.wakeOnLan: no host enables [power] without arming it";
    expr = builtins.filter (
      h:
      ((h.module.services.cairn.settings or { }).power.enable or false)
      && !((h.module.cairn.appliance.wakeOnLan or { }).enable or false)
    ) hosts;
    expected = [ ];
  }
]
