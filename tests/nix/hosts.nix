# Each host class in hosts/, read as plain data without nixpkgs: its default.nix (and
# installed.nix, when present) called with a stand-in `lib` whose priorities are the identity,
# so the values a host writes can be checked by the pure-Nix cases (test_network.nix, ...).
# `imports` are not followed: only what the host file itself sets is seen.
let
  hostsDir = ../../hosts;

  lib = {
    mkDefault = v: v;
    mkForce = v: v;
    optional = cond: v: if cond then [ v ] else [ ];
    # The shipped hosts' commented model examples name lib.fakeHash; never forced here.
    fakeHash = "";
  };
  # Forcing either fails the case loudly: a host's network values must not depend on them.
  pkgs = throw "tests/nix/hosts.nix: a host's network values must not need pkgs";
  config = throw "tests/nix/hosts.nix: a host's network values must not need config";

  call =
    file:
    let
      m = import file {
        inherit lib pkgs config;
        modulesPath = "/nixpkgs/nixos/modules";
      };
    in
    m.config or m;

  names = builtins.filter (n: (builtins.readDir hostsDir).${n} == "directory") (
    builtins.attrNames (builtins.readDir hostsDir)
  );

  read =
    name:
    let
      dir = hostsDir + "/${name}";
      module = call (dir + "/default.nix");
      installed = dir + "/installed.nix";
    in
    {
      inherit name module;
      installed = if builtins.pathExists installed then call installed else null;
      # What networkd sees: cairn.appliance turns networkd on (mkDefault) unless the host says.
      network = {
        host = "hosts/${name}";
        useNetworkd = module.networking.useNetworkd or (module.cairn.appliance.enable or false);
        defaultGateway = module.networking.defaultGateway or null;
        defaultGateway6 = module.networking.defaultGateway6 or null;
        nameservers = module.networking.nameservers or [ ];
        interfaces = module.networking.interfaces or { };
      };
    };
in
map read names
