# Headless appliance defaults: serial console, hardware watchdog, no emergency shell, SSH keys only.
{
  config,
  lib,
  options,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib)
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    types
    ;

  cfg = config.cairn.appliance;
  cairnLib = import ./lib;

  # Nobody could log in over SSH (password logins off, no key anywhere): modules/lib/ssh.nix.
  sshLockout = cairnLib.ssh.lockoutProblems {
    opensshEnable = config.services.openssh.enable;
    passwordAuthentication = config.services.openssh.settings.PasswordAuthentication;
    kbdInteractiveAuthentication = config.services.openssh.settings.KbdInteractiveAuthentication;
    users = config.users.users;
  };

  # Where a RAM-rooted host keeps its SSH host keys (cairn.appliance.sshHostKeyVolume).
  hostKeyDir = "${cfg.sshHostKeyVolume}/ssh-host-keys";
  keepHostKeys = pkgs.writeShellApplication {
    name = "cairn-ssh-host-keys";
    runtimeInputs = [
      pkgs.coreutils
      pkgs.diffutils
      pkgs.openssh
    ];
    text = builtins.readFile ./ssh-host-keys.sh;
  };

  journalLimits = {
    SystemMaxUse = cfg.journalMaxUse;
    RuntimeMaxUse = cfg.journalMaxUse;
    MaxRetentionSec = "1month";
  };
in
{
  options.cairn.appliance = {
    enable = mkEnableOption "Cairn's headless appliance defaults";

    serialConsole = mkOption {
      type = types.nullOr types.str;
      default = "ttyS0,115200";
      example = "ttyS1,115200";
      description = ''
        Serial console for kernel messages and a login prompt (the last `console=` is
        /dev/console). `null` keeps only the screen.
      '';
    };

    watchdogSec = mkOption {
      type = types.str;
      default = "30s";
      example = "1min";
      description = ''
        systemd's `RuntimeWatchdogSec=`: PID 1 pets the hardware watchdog (`/dev/watchdog`)
        at half this interval, and a hung machine is reset by the board. Without a hardware
        watchdog systemd logs that none is present and carries on.
      '';
    };

    maxGenerations = mkOption {
      type = types.ints.positive;
      default = 5;
      example = 10;
      description = "Boot entries kept by the boot loader (GRUB or systemd-boot).";
    };

    journalMaxUse = mkOption {
      type = types.str;
      default = "256M";
      example = "64M";
      description = ''
        Cap on the journal, persistent and volatile. Netbooted nodes keep /var in RAM, so
        their host class sets this lower.
      '';
    };

    sshKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... admin@example" ];
      description = ''
        Public keys allowed to log in as root over SSH. Password and keyboard-interactive
        logins are off, so the build fails (an assertion) while SSH is on and no user has a
        key: the first switch would lock the operator out. The shipped hosts read
        `hosts/ssh-keys.nix`, the one place for the operators' keys. Public keys are not
        secrets, so they may go into netboot images.
      '';
    };

    wakeOnLan.enable = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Arm Wake-on-LAN (magic packet) on every physical Ethernet port, through a systemd
        `.link` file matching `Type=ether` without a `Kind`, which keeps udev's default
        interface naming. Needed where `services.cairn.settings.power.enable` lets the node
        suspend: peers wake it with a magic packet (an assertion checks). The firmware must
        allow wake-up from the NIC too (often "Wake on LAN" or "Power on by PCI-E" in the
        BIOS setup).
      '';
    };

    sshHostKeyVolume = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/cairn-secrets";
      description = ''
        Mount point of a persistent volume (a {option}`fileSystems` entry) on which a host whose
        root is RAM keeps its SSH host keys, in `ssh-host-keys/`, so that it keeps its SSH
        identity across boots instead of a new one each time ("REMOTE HOST IDENTIFICATION HAS
        CHANGED"). At boot, after nixpkgs' key generation and before sshd starts,
        `cairn-ssh-host-keys.service` puts each key of {option}`services.openssh.hostKeys` that
        the volume holds in place and saves there each one it lacks. Without the volume mounted
        the unit does nothing and the host has this boot's keys (sshd then starts once the
        mount has given up, after its device timeout). After making the volume on a
        running host, `systemctl restart cairn-ssh-host-keys` saves the keys it has now.
        `null`: keys stay where {option}`services.openssh.hostKeys` puts them.
      '';
    };

    hostnameFromKernelCmdline = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Take the hostname from `hostname=` on the kernel command line (written by the PXE
        server's per-MAC iPXE script), so one stateless netboot image serves every machine of
        a class. Requires {option}`networking.hostName` to be `""` (an assertion checks).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      boot.kernelParams = [
        "console=tty0"
      ]
      ++ optional (cfg.serialConsole != null) "console=${cfg.serialConsole}";

      # Given no one at the console, an emergency shell only stops the boot; continuing
      # keeps SSH and the supervisor reachable.
      systemd.enableEmergencyMode = false;

      systemd.settings.Manager = {
        RuntimeWatchdogSec = mkDefault cfg.watchdogSec;
        # A reboot that hangs in its last stage is forced after this.
        RebootWatchdogSec = mkDefault "2min";
      };

      boot.loader.grub.configurationLimit = mkDefault cfg.maxGenerations;
      boot.loader.systemd-boot.configurationLimit = mkDefault cfg.maxGenerations;

      services.timesyncd.enable = mkDefault true;
      time.timeZone = mkDefault "UTC";

      services.openssh = {
        enable = mkDefault true;
        settings = {
          PasswordAuthentication = false;
          KbdInteractiveAuthentication = false;
          PermitRootLogin = mkDefault "prohibit-password";
        };
      };
      users.users.root.openssh.authorizedKeys.keys = cfg.sshKeys;

      networking.firewall.enable = mkDefault true;

      # Wake-on-LAN per port, as nixpkgs' networking.interfaces.<name>.wakeOnLan does it (a
      # .link file), but for ports whose names are not known in advance (one netboot image for
      # every legacy machine). udev applies only the first .link file that matches a device, so
      # this one repeats systemd's 99-default.link naming policies.
      systemd.network.links."45-cairn-wake-on-lan" = mkIf cfg.wakeOnLan.enable {
        matchConfig = {
          Type = "ether";
          Kind = "!*";
        };
        linkConfig = {
          WakeOnLan = "magic";
          NamePolicy = "keep kernel database onboard slot path";
          AlternativeNamesPolicy = "database onboard slot path";
          MACAddressPolicy = "persistent";
        };
      };

      # DHCP on every wired port, without letting DHCP rename the machine: the hostname comes
      # from the configuration or the kernel command line. "90-" sorts after networks that
      # other modules declare per interface.
      networking.useNetworkd = mkDefault true;
      systemd.network.networks."90-cairn-wired" = {
        matchConfig = {
          Type = "ether";
          # Physical interfaces have no kind; this keeps veth, bridges, bonds and other virtual
          # links of Type=ether out (as nixpkgs' own 99-ethernet-default-dhcp does).
          Kind = "!*";
        };
        networkConfig.DHCP = mkDefault "yes";
        dhcpV4Config.UseHostname = false;
      };

      documentation.enable = mkDefault false;
      programs.command-not-found.enable = mkDefault false;
      fonts.fontconfig.enable = mkDefault false;
      nix.settings.experimental-features = mkDefault [
        "nix-command"
        "flakes"
      ];

      assertions = map (message: {
        assertion = false;
        inherit message;
      }) sshLockout
      ++ [
        {
          assertion = !cfg.hostnameFromKernelCmdline || config.networking.hostName == "";
          message = "cairn.appliance.hostnameFromKernelCmdline: networking.hostName must be \"\" (it is \"${config.networking.hostName}\"): a fixed name goes into /etc/hostname and is set again on every activation, replacing the per-machine hostname=";
        }
      ];
    }

    # journald's settings moved from the `extraConfig` text to the structured
    # `settings.Journal` in nixpkgs; use whichever this nixpkgs has.
    (
      if options.services.journald ? settings then
        { services.journald.settings.Journal = lib.mapAttrs (_: mkDefault) journalLimits; }
      else
        {
          services.journald.extraConfig = lib.concatStrings (
            lib.mapAttrsToList (k: v: "${k}=${v}\n") journalLimits
          );
        }
    )

    (mkIf (cfg.sshHostKeyVolume != null && config.services.openssh.enable) {
      systemd.services.cairn-ssh-host-keys = {
        description = "SSH host keys kept on ${cfg.sshHostKeyVolume}";
        wantedBy = [ "multi-user.target" ];
        # After the volume's mount (which may fail: nofail) and nixpkgs' sshd-keygen.service
        # (which makes the keys a RAM root lacks at every boot), before sshd reads them.
        after = [
          "${utils.escapeSystemdPath cfg.sshHostKeyVolume}.mount"
          "sshd-keygen.service"
        ];
        before = [ "sshd.service" ];
        unitConfig.ConditionPathIsMountPoint = cfg.sshHostKeyVolume;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = utils.escapeSystemdExecArgs (
            [
              (lib.getExe keepHostKeys)
              hostKeyDir
            ]
            ++ map (k: k.path) config.services.openssh.hostKeys
          );
        };
      };

      assertions = [
        {
          assertion = config.fileSystems ? ${cfg.sshHostKeyVolume};
          message = "cairn.appliance.sshHostKeyVolume: '${cfg.sshHostKeyVolume}' is not among fileSystems: keys kept there would live in RAM like the rest";
        }
      ];
    })

    (mkIf cfg.hostnameFromKernelCmdline {
      systemd.services.cairn-hostname = {
        description = "Hostname from hostname= on the kernel command line";
        wantedBy = [ "sysinit.target" ];
        before = [
          "sysinit.target"
          "network-pre.target"
          "systemd-networkd.service"
        ];
        unitConfig = {
          DefaultDependencies = false;
          ConditionKernelCommandLine = "hostname";
        };
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          name=
          for arg in $(< /proc/cmdline); do
            case "$arg" in
              hostname=*) name="''${arg#hostname=}" ;;
            esac
          done
          # An RFC 1123 label, as the PXE server writes it; anything else is ignored.
          if [[ ! "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]]; then
            echo "ignoring invalid hostname= '$name' on the kernel command line" >&2
            exit 0
          fi
          echo -n "$name" > /proc/sys/kernel/hostname
          echo "hostname set to $name from the kernel command line"
        '';
      };
    })
  ]);
}
