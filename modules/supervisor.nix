# The cairn supervisor: its user, validated JSON settings, the hardened notify unit, and polkit.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    concatStringsSep
    literalExpression
    literalMD
    mapAttrs'
    mapAttrsToList
    mkDefault
    mkEnableOption
    mkIf
    mkOption
    nameValuePair
    optionalAttrs
    types
    ;

  cfg = config.services.cairn;
  json = pkgs.formats.json { };

  rendered = json.generate "cairn.json" cfg.settings;

  # `cairn config check` at build time: a bad host config fails `nix build`, not the node.
  configFile =
    pkgs.runCommand "cairn-config.json"
      {
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      }
      ''
        cairn config check ${rendered}
        cp ${rendered} $out
      '';

  apiPort = cfg.settings.api.port or 8470;
  # systemd's credentials directory of cairn.service: LoadCredential= copies land here.
  credentials = "/run/credentials/cairn.service";

  gpuHost = lib.elem "nvidia" config.services.xserver.videoDrivers;

  cairnLib = import ./lib;

  # The polkit rule is rendered by modules/lib/polkit.nix, the same function the nspawn test
  # (tests/integration/test_polkit.py) renders and installs under real polkit and systemd.
  polkitRule = cairnLib.polkit.manageUnitsRule {
    inherit (cfg) user;
    units = cfg.managedUnits;
  };

  # Units that come with systemd itself (NixOS links them from the systemd package: its
  # `upstreamSystemUnits`), which the rule may name without a definition in this system.
  # suspend.target is one; a target can never be transient either (systemd has no transient
  # targets).
  upstreamUnits = [ "suspend.target" ];

  # Names with a unit file on this system: every unit NixOS generates (`systemd.units`: the
  # services, sockets, targets, timers, ... by full name), enabled (a disabled one is a link to
  # /dev/null) and not only a drop-in (`overrideStrategy = "asDropin"`: the instances of a
  # template, whose file is the template's, "NAME@.service"), plus the upstream ones above.
  unitFiles =
    upstreamUnits
    ++ lib.attrNames (
      lib.filterAttrs (
        _: u: u.enable && (u.overrideStrategy or "asDropinIfExists") != "asDropin"
      ) config.systemd.units
    );
  missingUnits = cairnLib.polkit.missingUnits {
    units = cfg.managedUnits;
    withFile = unitFiles;
  };

  # The sandbox of cairn.service; the nspawn test boots the daemon under the same file.
  hardening = cairnLib.unitFile.settings ./cairn-unit-hardening.conf;

  # [power] suspends the node and counts on peers to wake it with a magic packet: something must
  # arm Wake-on-LAN on its port (cairn.appliance.wakeOnLan, or the host's own .link/interface).
  powerOn = cfg.settings.power.enable or false;
  wakeOnLan = cairnLib.network.wakeOnLan {
    inherit (config.networking) interfaces;
    inherit (config.systemd.network) links;
  };
in
{
  options.services.cairn = {
    enable = mkEnableOption "the Cairn supervisor daemon";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./packages/cairn.nix { };
      defaultText = literalExpression "pkgs.callPackage ./packages/cairn.nix { }";
      example = literalExpression ''pkgs.callPackage ./packages/cairn.nix { llamaVariant = "cuda"; }'';
      description = ''
        The cairn package. The default builds llama-cpp-python portable (no AVX), which runs on
        every node; GPU hosts use the `"cuda"` variant.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = json.type;
        options.version = mkOption {
          type = types.ints.positive;
          default = 1;
          example = 1;
          description = "Version of the supervisor's config schema.";
        };
      };
      default = { };
      example = literalExpression ''
        {
          node.state_dir = "/var/lib/cairn";
          api = { host = "127.0.0.1"; port = 8470; };
          probe.interval = 5.0;
          log.level = "info";
        }
      '';
      description = ''
        The supervisor's configuration, rendered to JSON and checked with
        `cairn config check` when the system is built; see `cairn config schema` for every key.
        Each host class keeps its settings in `hosts/<class>/settings.nix`, on the base they
        share (`hosts/settings-base.nix`).
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      internal = true;
      default = configFile;
      defaultText = literalMD "the checked JSON rendering of {option}`services.cairn.settings`";
      description = ''
        The supervisor's settings as JSON, checked with `cairn config check` at build time: what
        cairn.service runs with, and what the model workers of `modules/inference.nix` read.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Whether to open the API port (`settings.api.port`, default 8470, TCP) and, with gossip
        on, the gossip port (`services.cairn.gossip.port`, UDP and TCP) in the firewall.
      '';
    };

    gossipKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/cairn-secrets/gossip.key";
      description = ''
        Absolute path, on the node, of the gossip encryption keyring. It is a string on purpose:
        a Nix path would be copied into the world-readable store (and into netboot images).
        systemd hands it to the daemon as the credential `gossip-key`
        (`/run/credentials/cairn.service/gossip-key`, which becomes `settings.gossip.key_file`
        unless that is set directly), so the file can stay readable by root only. One base64 AES key (16, 24 or 32 bytes) per
        line, the first one encrypts, every one decrypts: add the new key second on every node,
        then move it first, then drop the old one.
      '';
    };

    apiTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/cairn-secrets/api.token";
      description = ''
        Absolute path, on the node, of the bearer token that network clients of the API must
        send (at least 16 characters). Handed over like {option}`services.cairn.gossipKeyFile`
        (credential `api-token`, which becomes `settings.api.token_file` unless that is set
        directly). Without it the API
        listens on loopback only; set `settings.api.host` to e.g. `"0.0.0.0"` once it is set.
      '';
    };

    gossip = {
      enable = mkEnableOption "membership and health gossip with the other nodes, and routing to them (needs {option}`services.cairn.gossipKeyFile`)";

      port = mkOption {
        type = types.port;
        default = 8471;
        description = ''
          UDP (probes, piggybacked updates) and TCP (push-pull) port of the gossip:
          `settings.gossip.port`, where a value set directly wins over this one.
        '';
      };

      join = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "10.0.0.11"
          "node2:8471"
        ];
        description = ''
          Peers to join through (`host` or `host:port`); one that answers is enough, and the
          node retries with backoff while it knows no live member. Becomes
          `settings.gossip.join`; a list set there directly wins over this one.
        '';
      };

      profile = mkOption {
        type = types.enum [
          "lan"
          "wan"
          "local"
        ];
        default = "lan";
        description = ''
          Timing profile: memberlist's LAN (1 s probes), WAN (5 s probes, longer timeouts) or
          local (loopback) defaults. Becomes `settings.gossip.profile`; a value set there
          directly wins over this one.
        '';
      };
    };

    user = mkOption {
      type = types.str;
      default = "cairn";
      example = "cairn";
      description = "System user the supervisor runs as (created by this module).";
    };

    group = mkOption {
      type = types.str;
      default = "cairn";
      example = "cairn";
      description = "Primary group of {option}`services.cairn.user` (created by this module).";
    };

    watchdogSec = mkOption {
      type = types.str;
      default = "30s";
      example = "1min";
      description = ''
        systemd `WatchdogSec=` of cairn.service. The daemon pings at half this interval from
        its event loop; a blocked loop gets the unit killed and restarted.
      '';
    };

    heal = {
      confirmWindow = mkOption {
        type = types.ints.positive;
        default = 120;
        example = 300;
        description = ''
          Seconds a newly activated generation has to pass every critical check (the
          {option}`services.cairn.heal.criticalUnits` active, each model answering a probe,
          a peer reachable when gossip joins any). Passing confirms it for good; running out
          rolls the system back to the newest confirmed generation through
          `cairn-rollback.service`, once, and marks the failed one bad. Becomes
          `settings.heal.confirm_window`; a value set there directly wins over this one.
        '';
      };

      criticalUnits = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "nginx.service" ];
        description = ''
          Units that must be active for a new generation to be confirmed. Becomes
          `settings.heal.critical_units`; a list set there directly wins over this one (the two
          are not joined).
        '';
      };
    };

    sleepable = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              socket = mkOption {
                type = types.str;
                default = "${name}.socket";
                defaultText = literalExpression ''"''${name}.socket"'';
                example = "jupyter-proxy.socket";
                description = ''
                  The socket unit that keeps listening while the service sleeps; its next
                  connection wakes the service (systemd socket activation).
                '';
              };
              ttl = mkOption {
                type = types.ints.positive;
                default = 300;
                example = 900;
                description = "Seconds without open connections after which the supervisor stops the service.";
              };
            };
          }
        )
      );
      default = { };
      example = literalExpression ''{ jupyter = { ttl = 900; }; }'';
      description = ''
        Socket-activated services the supervisor puts to sleep when idle, by service name
        (without `.service`). Each lands in `settings.sleep.services`, and the supervisor may
        start and stop it (polkit). Make the service `Type=notify` and have it accept
        connections only once it is ready: connections that arrive while it starts wait in the
        socket's backlog, so none is refused. Model workers need nothing here: they sleep after
        their model's `idleTtl`.
      '';
    };

    managedUnits = mkOption {
      type = types.attrsOf (types.listOf types.str);
      default = { };
      example = literalExpression ''{ "jupyter.service" = [ "start" "stop" ]; }'';
      description = ''
        Units the supervisor may manage through systemd's D-Bus API, as exact unit names mapped
        to the polkit `verb`s allowed on them (`start`, `stop`, `restart`, `try-restart`,
        `kill`, `reset-failed`, ...). Rendered into one polkit rule for
        `org.freedesktop.systemd1.manage-units` that refuses every other unit action of
        {option}`services.cairn.user`.

        Every name must have a unit file on the system (a unit defined in `systemd.services`,
        `systemd.sockets`, ... or `systemd.units`, or an instance of a defined template; for a
        unit that only a package in `systemd.packages` ships, define it, even empty, in
        `systemd.services`), else evaluation fails: systemd asks polkit about creating a
        transient unit with the same name and verb as about starting it, so a name without a
        file would let the supervisor create it with any command, as root. No globs, for the
        same reason.

        This module always adds `cairn-rollback.service` (start only), each
        {option}`services.cairn.sleepable` service (start, stop) and, with
        `settings.power.enable`, `suspend.target` (start); `modules/inference.nix` adds
        `cairn-model@NAME.service` and `.socket` for each declared model. Definitions elsewhere
        merge with those per name (the verb lists are concatenated), so a later capability only
        names its own units.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.gossipKeyFile == null || lib.hasPrefix "/" cfg.gossipKeyFile;
        message = "services.cairn.gossipKeyFile: '${toString cfg.gossipKeyFile}' must be an absolute path on the node";
      }
      {
        assertion = cfg.gossipKeyFile == null || !(lib.hasPrefix builtins.storeDir cfg.gossipKeyFile);
        message = "services.cairn.gossipKeyFile: '${toString cfg.gossipKeyFile}' is in the Nix store, which every user (and every netboot client) can read; keep the key outside the store";
      }
      {
        assertion = cfg.gossip.enable -> cfg.gossipKeyFile != null;
        message = "services.cairn.gossip.enable: gossip is encrypted; set services.cairn.gossipKeyFile";
      }
      {
        assertion = cfg.apiTokenFile == null || (lib.hasPrefix "/" cfg.apiTokenFile && !(lib.hasPrefix builtins.storeDir cfg.apiTokenFile));
        message = "services.cairn.apiTokenFile: '${toString cfg.apiTokenFile}' must be an absolute path on the node, outside the Nix store";
      }
      {
        assertion = powerOn -> wakeOnLan != [ ];
        message = "services.cairn.settings.power.enable: the node would suspend, but no port wakes on LAN, so no peer could wake it: set cairn.appliance.wakeOnLan.enable = true (or networking.interfaces.<name>.wakeOnLan.enable)";
      }
      {
        assertion = missingUnits == [ ];
        message = "services.cairn.managedUnits: ${concatStringsSep ", " missingUnits} ha${
          if lib.length missingUnits == 1 then "s" else "ve"
        } no unit file on this system; define the unit (or its template), or remove the name: polkit cannot tell starting a unit from creating a transient one under that name";
      }
    ];

    # Set here rather than as the option's default, so that other modules' definitions add to
    # these instead of replacing them.
    services.cairn.managedUnits = lib.mkMerge [
      {
        # The privileged rollback helper: the supervisor may only start it.
        "cairn-rollback.service" = [ "start" ];
      }
      # settings.power: an idle node suspends itself (peers wake it with Wake-on-LAN).
      (mkIf (cfg.settings.power.enable or false) { "suspend.target" = [ "start" ]; })
      # Sleepable services: started by their socket, stopped when idle.
      (mapAttrs' (
        name: _:
        nameValuePair "${name}.service" [
          "start"
          "stop"
        ]
      ) cfg.sleepable)
    ];

    # The options that mirror a settings key define it with mkDefault: a value set in
    # `settings` directly wins, instead of conflicting with the option's (default) value.
    services.cairn.settings = lib.mkMerge [
      (mkIf cfg.gossip.enable {
        gossip = lib.mapAttrs (_: mkDefault) {
          key_file = "${credentials}/gossip-key";
          inherit (cfg.gossip) port join profile;
        };
      })
      (mkIf (cfg.apiTokenFile != null) { api.token_file = mkDefault "${credentials}/api-token"; })
      (mkIf (cfg.sleepable != { }) {
        sleep.services = mapAttrsToList (name: svc: {
          unit = "${name}.service";
          inherit (svc) socket ttl;
        }) cfg.sleepable;
      })
      {
        heal = {
          confirm_window = mkDefault cfg.heal.confirmWindow;
          critical_units = mkDefault cfg.heal.criticalUnits;
        };
      }
    ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      inherit (cfg) group;
      description = "Cairn supervisor";
      home = "/var/lib/cairn";
    };
    users.groups.${cfg.group} = { };

    environment.systemPackages = [ cfg.package ]; # `cairn status` for operators

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ apiPort ] ++ lib.optional cfg.gossip.enable cfg.gossip.port;
      allowedUDPPorts = lib.optional cfg.gossip.enable cfg.gossip.port;
    };

    security.polkit.enable = true;
    security.polkit.extraConfig = polkitRule;

    # The only privileged piece: switches to the generation the supervisor asked for (in its
    # state file), after checking it is an existing system generation not marked bad. Started
    # by the supervisor over D-Bus (the polkit rule allows it that one verb on this one unit).
    systemd.services.cairn-rollback = {
      description = "Cairn rollback to the last confirmed NixOS generation";
      # A switch must not start or restart it: it runs only when the supervisor asks.
      restartIfChanged = false;
      stopIfChanged = false;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe cfg.package} rollback-helper --config ${configFile} --state-dir /var/lib/cairn";
        TimeoutStartSec = "15min";
      }
      # A whole switch-to-configuration runs inside, so it keeps root, the host's files, devices
      # and namespaces; only what a switch never needs is cut. The file names every exposure
      # that remains and why.
      // cairnLib.unitFile.settings ./cairn-rollback-hardening.conf;
    };

    systemd.services.cairn = {
      description = "Cairn supervisor";
      wantedBy = [ "multi-user.target" ];
      # Peers may come and go: gossip retries on its own, so no wait for network-online.
      after = [
        "network.target"
        "dbus.service"
      ];
      # Not restarted by switch-to-configuration: the supervisor runs the health gate that
      # decides whether a newly activated generation stays or is rolled back, and restarting it
      # in the middle of that activation would drop the gate. Until the self-heal capability
      # restarts it after a confirmed switch, the running daemon keeps its old package/config.
      restartIfChanged = false;
      # A secret on its own volume (a netbooted node's secrets disk): wait for it to be mounted.
      unitConfig.RequiresMountsFor = map dirOf (
        lib.filter (f: f != null) [
          cfg.gossipKeyFile
          cfg.apiTokenFile
        ]
      );

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} run --config ${configFile}";
        WatchdogSec = cfg.watchdogSec;
        Restart = "on-failure";
        RestartSec = "2s";
        # Exit code 2 is a config error: restarting cannot fix it.
        RestartPreventExitStatus = 2;
        TimeoutStopSec = "10s";

        User = cfg.user;
        Group = cfg.group;
        StateDirectory = "cairn";
        StateDirectoryMode = "0750";
        WorkingDirectory = "/var/lib/cairn";
      }
      # The sandbox and LimitNOFILE, each relaxation with its reason: cairn-unit-hardening.conf.
      // hardening
      // optionalAttrs gpuHost {
        # NVML needs the NVIDIA character devices; DevicePolicy=closed keeps everything else out.
        PrivateDevices = false;
        DeviceAllow = [
          "char-nvidiactl"
          "char-nvidia-caps"
          "char-nvidia-frontend"
          "char-nvidia-uvm"
        ];
      }
      // {
        # systemd reads the secrets as root and hands the daemon private copies.
        LoadCredential =
          lib.optional (cfg.gossipKeyFile != null) "gossip-key:${cfg.gossipKeyFile}"
          ++ lib.optional (cfg.apiTokenFile != null) "api-token:${cfg.apiTokenFile}";
      };
    };
  };
}
