# Cases for modules/lib/mac.nix: normalize, hostMap and isDnsLabel, refusals included.
let
  inherit (import ../../modules/lib) mac;
  label63 = "a${builtins.concatStringsSep "" (builtins.genList (_: "b") 62)}";
in
[
  # normalize
  {
    name = "mac.normalize: colons stay";
    expr = mac.normalize "52:54:00:12:34:56";
    expected = "52:54:00:12:34:56";
  }
  {
    name = "mac.normalize: dashes become colons";
    expr = mac.normalize "52-54-00-12-34-56";
    expected = "52:54:00:12:34:56";
  }
  {
    name = "mac.normalize: upper case becomes lower case";
    expr = mac.normalize "52:54:00:AB:CD:EF";
    expected = "52:54:00:ab:cd:ef";
  }
  {
    name = "mac.normalize: upper case with dashes";
    expr = mac.normalize "0A-1B-2C-3D-4E-5F";
    expected = "0a:1b:2c:3d:4e:5f";
  }
  {
    name = "mac.normalize: refuses mixed separators";
    expr = mac.normalize "52:54-00:12:34:56";
    throws = "cairn.pxe.hosts: invalid MAC address '52:54-00:12:34:56'";
  }
  {
    name = "mac.normalize: refuses five bytes";
    expr = mac.normalize "52:54:00:12:34";
    throws = "cairn.pxe.hosts: invalid MAC address '52:54:00:12:34'";
  }
  {
    name = "mac.normalize: refuses seven bytes";
    expr = mac.normalize "52:54:00:12:34:56:78";
    throws = "cairn.pxe.hosts: invalid MAC address '52:54:00:12:34:56:78'";
  }
  {
    name = "mac.normalize: refuses a non-hex digit";
    expr = mac.normalize "52:54:00:12:34:5g";
    throws = "cairn.pxe.hosts: invalid MAC address '52:54:00:12:34:5g'";
  }
  {
    name = "mac.normalize: refuses bare hex";
    expr = mac.normalize "525400123456";
    throws = "cairn.pxe.hosts: invalid MAC address '525400123456'";
  }
  {
    name = "mac.normalize: refuses the dotted form";
    expr = mac.normalize "5254.0012.3456";
    throws = "cairn.pxe.hosts: invalid MAC address '5254.0012.3456'; expected six hex pairs separated by ':' or '-'";
  }
  {
    name = "mac.normalize: refuses a non-string";
    expr = mac.normalize 42;
    throws = "cairn.pxe.hosts: invalid MAC address a int";
  }

  # hostMap
  {
    name = "mac.hostMap: keys by normalized MAC";
    expr = mac.hostMap {
      node-a = {
        mac = "52-54-00-AA-00-01";
        class = "legacy-node";
      };
      ws = {
        mac = "52:54:00:aa:00:02";
        class = "rtx4070-workstation";
      };
    };
    expected = {
      "52:54:00:aa:00:01" = {
        hostname = "node-a";
        class = "legacy-node";
      };
      "52:54:00:aa:00:02" = {
        hostname = "ws";
        class = "rtx4070-workstation";
      };
    };
  }
  {
    name = "mac.hostMap: no hosts";
    expr = mac.hostMap { };
    expected = { };
  }
  {
    name = "mac.hostMap: refuses a MAC given to two hosts, naming both";
    expr = mac.hostMap {
      node-a = {
        mac = "52:54:00:aa:00:01";
        class = "legacy-node";
      };
      node-b = {
        mac = "52-54-00-AA-00-01";
        class = "legacy-node";
      };
    };
    throws = "cairn.pxe.hosts: MAC address 52:54:00:aa:00:01 is given to more than one host: 'node-a' and 'node-b'";
  }
  {
    name = "mac.hostMap: refuses a hostname with an underscore";
    expr = mac.hostMap {
      node_a = {
        mac = "52:54:00:aa:00:01";
        class = "legacy-node";
      };
    };
    throws = "cairn.pxe.hosts: hostname 'node_a' is not a valid DNS label";
  }
  {
    name = "mac.hostMap: refuses a hostname ending in a dash";
    expr = mac.hostMap {
      "node-" = {
        mac = "52:54:00:aa:00:01";
        class = "legacy-node";
      };
    };
    throws = "cairn.pxe.hosts: hostname 'node-' is not a valid DNS label";
  }
  {
    name = "mac.hostMap: refuses a dotted hostname";
    expr = mac.hostMap {
      "node.lan" = {
        mac = "52:54:00:aa:00:01";
        class = "legacy-node";
      };
    };
    throws = "cairn.pxe.hosts: hostname 'node.lan' is not a valid DNS label";
  }
  {
    name = "mac.hostMap: a bad MAC names its host";
    expr = mac.hostMap {
      node-a = {
        mac = "zz";
        class = "legacy-node";
      };
    };
    throws = "cairn.pxe.hosts.node-a.mac: invalid MAC address 'zz'";
  }
  {
    name = "mac.hostMap: refuses a host without a class";
    expr = mac.hostMap { node-a.mac = "52:54:00:aa:00:01"; };
    throws = "cairn.pxe.hosts.node-a: expected { mac = ";
  }
  {
    name = "mac.hostMap: refuses a class that is not a string";
    expr = mac.hostMap {
      node-a = {
        mac = "52:54:00:aa:00:01";
        class = 1;
      };
    };
    throws = "cairn.pxe.hosts.node-a.class: expected a host class name, got a int";
  }

  # isDnsLabel
  {
    name = "mac.isDnsLabel: accepts letters, digits and inner dashes, up to 63";
    expr = map mac.isDnsLabel [
      "node-1"
      "a"
      "7"
      "Node"
      label63
    ];
    expected = [
      true
      true
      true
      true
      true
    ];
  }
  {
    name = "mac.isDnsLabel: refuses empty, edge dashes, dots, underscores, 64 characters";
    expr = map mac.isDnsLabel [
      ""
      "-a"
      "a-"
      "a.b"
      "a_b"
      "${label63}c"
      5
    ];
    expected = [
      false
      false
      false
      false
      false
      false
      false
    ];
  }

  # The shipped PXE server: every machine boots a class it publishes.
  {
    name = "mac.hostMap: every machine in hosts/pxe-server/machines.nix boots a class in classes.nix";
    expr =
      let
        published = import ../../hosts/pxe-server/classes.nix;
        byMac = mac.hostMap (import ../../hosts/pxe-server/machines.nix);
      in
      builtins.filter (m: !(builtins.elem byMac.${m}.class published)) (builtins.attrNames byMac);
    expected = [ ];
  }
  {
    name = "mac.hostMap: the PXE server publishes the legacy class only, as shipped (no CUDA build)";
    expr = import ../../hosts/pxe-server/classes.nix;
    expected = [ "legacy-node" ];
  }
]
