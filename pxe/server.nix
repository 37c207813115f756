# The boot server: proxy-DHCP + TFTP (dnsmasq) for iPXE, HTTP (nginx) for trees, the last K trees kept.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    attrNames
    concatStringsSep
    filterAttrs
    literalExpression
    mapAttrsToList
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.cairn.pxe;
  cairnLib = import ../modules/lib;

  # Served trees are generations of this Nix profile: each is a GC root, `nix-env --rollback`
  # moves the entry back, and nginx follows the profile symlink on every request.
  profile = "/nix/var/nix/profiles/cairn-pxe";
  nixEnv = "${config.nix.package}/bin/nix-env";

  tree = pkgs.callPackage ../images/pxe-tree.nix {
    inherit (cfg)
      baseUrl
      hosts
      classes
      defaultClass
      ;
  };

  # dnsmasq serves TFTP from a plain directory; copies, not links out of the root.
  tftpRoot = pkgs.runCommand "cairn-pxe-tftp" { preferLocalBuild = true; } ''
    mkdir -p $out
    install -m 0444 ${pkgs.ipxe}/undionly.kpxe $out/undionly.kpxe
    install -m 0444 ${pkgs.ipxe}/ipxe.efi $out/ipxe.efi
  '';

  dnsmasqConf = pkgs.writeText "cairn-pxe-dnsmasq.conf" (
    cairnLib.dnsmasq.proxyConfig {
      inherit (cfg) interface subnet;
      tftpRoot = "${tftpRoot}";
      entryUrl = "${cfg.baseUrl}/entry.ipxe";
    }
  );

  cairnPxe = pkgs.writeShellApplication {
    name = "cairn-pxe";
    runtimeInputs = [ config.nix.package ];
    text = ''
      # Inspect and roll back the PXE trees this server serves (generations of ${profile}).
      profile=${profile}
      case "''${1:-}" in
        list) nix-env -p "$profile" --list-generations ;;
        rollback) nix-env -p "$profile" --rollback ;;
        switch)
          [ -n "''${2:-}" ] || { echo "usage: cairn-pxe switch GENERATION" >&2; exit 2; }
          nix-env -p "$profile" --switch-generation "$2"
          ;;
        current) readlink -f "$profile" ;;
        *)
          echo "usage: cairn-pxe list | current | rollback | switch GENERATION" >&2
          exit 2
          ;;
      esac
    '';
  };

  unknownClasses = filterAttrs (_: h: !(cfg.classes ? ${h.class})) cfg.hosts;

  # dnsmasq binds to this name: it must be one the naming in force can produce.
  nicProblems = cairnLib.network.nicNameProblems {
    where = "cairn.pxe.interface";
    name = cfg.interface;
    predictable = config.networking.usePredictableInterfaceNames;
  };
in
{
  options.cairn.pxe = {
    enable = mkEnableOption "the Cairn PXE boot server (proxy-DHCP, TFTP, HTTP)";

    interface = mkOption {
      type = types.str;
      default = "eth0";
      example = "enp3s0";
      description = ''
        LAN interface dnsmasq answers PXE requests on. A kernel name (`eth0`) needs
        {option}`networking.usePredictableInterfaceNames` off, which takes effect only from the
        next boot (`net.ifnames=0`); any other name needs it on. The build fails when the two
        disagree.
      '';
    };

    subnet = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "192.168.1.0";
      description = ''
        Network address of the LAN (the router's DHCP range). dnsmasq runs in proxy mode:
        the router keeps leasing addresses, this server only adds the boot information.
      '';
    };

    address = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "192.168.1.2";
      description = "Address of this server that PXE clients reach over HTTP.";
    };

    httpPort = mkOption {
      type = types.port;
      default = 80;
      example = 8080;
      description = "TCP port nginx serves the trees on.";
    };

    baseUrl = mkOption {
      type = types.nullOr types.str;
      default =
        if cfg.address == null then
          null
        else
          "http://${cfg.address}${lib.optionalString (cfg.httpPort != 80) ":${toString cfg.httpPort}"}";
      defaultText = lib.literalMD "`http://` and `address`, with `:httpPort` unless it is 80";
      example = "http://pxe.lan";
      description = "URL of the served tree, written into every iPXE script.";
    };

    hosts = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            mac = mkOption {
              type = types.str;
              example = "52:54:00:12:34:56";
              description = "MAC address of the machine's boot NIC (':' or '-' separated).";
            };
            class = mkOption {
              type = types.str;
              example = "legacy-node";
              description = "Host class to boot, a name in {option}`cairn.pxe.classes`.";
            };
          };
        }
      );
      default = { };
      example = literalExpression ''
        {
          legacy-01 = { mac = "00:1a:2b:3c:4d:5e"; class = "legacy-node"; };
        }
      '';
      description = ''
        Known machines by hostname. Each gets `boot/<mac>.ipxe`, which boots its class with
        `hostname=<name>` on the kernel command line; unknown machines boot
        {option}`cairn.pxe.defaultClass` without a hostname.
      '';
    };

    classes = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            tree = mkOption {
              type = types.package;
              example = literalExpression "config.system.build.netbootTree";
              description = "Netboot tree with `bzImage` and `initrd` (`system.build.netbootTree`).";
            };
            kernelParams = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [
                "console=ttyS0,115200"
                "isolcpus=domain,managed_irq,1"
              ];
              description = "Kernel command line of the class (its `boot.kernelParams`).";
            };
            init = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "/nix/store/...-nixos-system-legacy-node/init";
              description = "`init=` of the class: its toplevel's `/init`.";
            };
          };
        }
      );
      default = { };
      example = literalExpression ''
        { legacy-node = self.nixosConfigurations.legacy-node.config.system.build.cairnNetboot; }
      '';
      description = ''
        Host classes served, each from a system that imports `images/netboot.nix`; its
        `config.system.build.cairnNetboot` has exactly these attributes.
      '';
    };

    defaultClass = mkOption {
      type = types.str;
      default = "legacy-node";
      example = "legacy-node";
      description = "Class booted by machines not listed in {option}`cairn.pxe.hosts`.";
    };

    keepTrees = mkOption {
      type = types.ints.positive;
      default = 5;
      example = 10;
      description = ''
        How many published trees (generations of ${profile}) are kept, so that a bad image can
        be rolled back with `cairn-pxe rollback`.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to open DHCP proxy (67, 4011/udp), TFTP (69/udp) and HTTP (httpPort/tcp).";
    };

    tree = mkOption {
      type = types.package;
      readOnly = true;
      default = tree;
      defaultText = lib.literalMD "the tree rendered from `baseUrl`, `hosts`, `classes` and `defaultClass`";
      description = "The tree this configuration publishes (`nix build .#pxe-tree`).";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.subnet != null;
        message = "cairn.pxe.subnet: must be set to the LAN's network address, e.g. \"192.168.1.0\"";
      }
      {
        assertion = cfg.address != null || cfg.baseUrl != null;
        message = "cairn.pxe.address: must be set to this server's LAN address (or set cairn.pxe.baseUrl)";
      }
      {
        assertion = cfg.classes ? ${cfg.defaultClass};
        message = "cairn.pxe.defaultClass: '${cfg.defaultClass}' is not in cairn.pxe.classes (${concatStringsSep ", " (attrNames cfg.classes)})";
      }
      {
        assertion = unknownClasses == { };
        message = concatStringsSep "\n" (
          mapAttrsToList (
            name: h:
            "cairn.pxe.hosts.${name}.class: unknown class '${h.class}' (known: ${concatStringsSep ", " (attrNames cfg.classes)})"
          ) unknownClasses
        );
      }
    ]
    ++ map (message: {
      assertion = false;
      inherit message;
    }) nicProblems;

    system.build.cairnPxeTree = tree;

    environment.systemPackages = [ cairnPxe ];

    # Publish the configured tree as a new generation when it changed since the last publish,
    # so a manual rollback survives reboots until the configuration brings a new tree.
    systemd.services.cairn-pxe-publish = {
      description = "Publish the Cairn PXE tree";
      wantedBy = [ "multi-user.target" ];
      before = [
        "nginx.service"
        "dnsmasq.service"
      ];
      restartTriggers = [ tree ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        StateDirectory = "cairn-pxe";
      };
      script = ''
        marker=/var/lib/cairn-pxe/published
        if [ "$(cat "$marker" 2>/dev/null)" != "${tree}" ]; then
          ${nixEnv} -p ${profile} --set ${tree}
          echo "${tree}" > "$marker"
        fi
        ${nixEnv} -p ${profile} --delete-generations +${toString cfg.keepTrees}
        echo "serving $(readlink -f ${profile})"
      '';
    };

    # bind-interfaces needs the LAN interface configured before dnsmasq starts.
    systemd.services.dnsmasq = {
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
    };

    services.dnsmasq = {
      enable = true;
      # Proxy-DHCP and TFTP only; the LAN's resolver stays as it is.
      resolveLocalQueries = false;
      settings.conf-file = [ "${dnsmasqConf}" ];
    };

    services.nginx = {
      enable = true;
      virtualHosts.cairn-pxe = {
        default = true;
        listen = [
          {
            addr = "0.0.0.0";
            port = cfg.httpPort;
          }
        ];
        root = profile;
        extraConfig = ''
          autoindex off;
        '';
      };
    };

    networking.firewall = mkIf cfg.openFirewall {
      allowedUDPPorts = [
        67
        69
        4011
      ];
      allowedTCPPorts = [ cfg.httpPort ];
    };
  };
}
