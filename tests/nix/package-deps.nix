# modules/packages/cairn.nix evaluated with stand-ins for nixpkgs' lib, python3 and cudaPackages: what it puts in `dependencies`.
# nixpkgs cannot be evaluated here, so each stand-in package is only its attribute name plus
# what cairn.nix changes on it (override / overridePythonAttrs), enough to see which package
# each dependency is and how llama-cpp-python was built.
{
  llamaVariant ? "portable",
}:
let
  mapping = import ../../modules/packages/python-deps.nix;

  # A package stand-in: `attr` is the python3Packages attribute it came from.
  stub =
    attr: attrs:
    attrs
    // {
      inherit attr;
      override = args: stub attr (attrs // args);
      overridePythonAttrs = f: stub attr (attrs // f attrs);
    };

  # Only the attributes the mapping names exist (plus what the build and checks use), so a
  # dependency taken from anywhere but the mapping fails to evaluate.
  others = [
    "jsonschema"
    "pytest-aiohttp"
    "pytest-asyncio"
    "pytestCheckHook"
    "setuptools"
  ];
  packages =
    builtins.listToAttrs (
      map (attr: {
        name = attr;
        value = stub attr { };
      }) (builtins.attrValues mapping ++ others ++ [ "numpy_2" ])
    )
    // {
      buildPythonApplication = args: args;
    };

  # python3.override { packageOverrides; self; } as nixpkgs applies it: the overrides see the
  # final set and the one before.
  pythonWith =
    pkgs:
    {
      inherit pkgs;
      override =
        { packageOverrides, ... }:
        let
          final = pkgs // packageOverrides final pkgs;
        in
        pythonWith final;
    };
  python3 = pythonWith packages;

  # nixpkgs' cudaPackages.flags.cmakeCudaArchitecturesString (pkgs/development/cuda-modules/
  # flags.nix): config.cudaCapabilities without dots, joined by ";". The workstation's config.
  cudaCapabilities = (import ../../hosts/rtx4070-workstation/nixpkgs-config.nix).cudaCapabilities;
  dropDots = builtins.replaceStrings [ "." ] [ "" ];
  cudaPackages.flags.cmakeCudaArchitecturesString = builtins.concatStringsSep ";" (
    map dropDots cudaCapabilities
  );

  lib = {
    inherit (builtins) attrNames concatStringsSep elem head;
    mapAttrsToList = f: set: map (n: f n set.${n}) (builtins.attrNames set);
    cmakeBool = name: flag: "-D${name}:BOOL=${if flag then "TRUE" else "FALSE"}";
    cmakeFeature = name: value: "-D${name}:STRING=${value}";
    fileset = {
      toSource = args: args;
      unions = files: files;
      fileFilter = pred: dir: dir;
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };

  package = import ../../modules/packages/cairn.nix {
    inherit
      lib
      python3
      cudaPackages
      llamaVariant
      ;
  };
in
map (dep: {
  inherit (dep) attr;
  cmakeFlags = dep.cmakeFlags or [ ];
  cudaSupport = dep.cudaSupport or false;
  mesonFlags = dep.mesonFlags or [ ];
}) package.dependencies
