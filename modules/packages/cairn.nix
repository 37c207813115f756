# The cairn supervisor package; llama-cpp-python built portable (no AVX, legacy nodes) or with CUDA.
{
  lib,
  python3,
  # The CUDA package set of this nixpkgs: its flags carry config.cudaCapabilities.
  cudaPackages ? { },
  # "portable": Core 2 Duo nodes (SSSE3 at most: no SSE4.1/4.2, AVX, FMA, F16C; GGML_NATIVE off),
  # numpy with no CPU baseline. "cuda": CUDA on, CPU path at x86-64-v3 (the RTX 4070
  # workstation has AVX2). Flags: ./build-flags.json.
  llamaVariant ? "portable",
}:
let
  root = ../..;

  # One version, read from the Python package (`cairn.__version__`), as setuptools does.
  version = lib.head (
    builtins.match ''.*__version__ = "([^"]+)".*'' (builtins.readFile (root + "/supervisor/cairn/__init__.py"))
  );

  # The CPU flags, shared with the Makefile's legacy wheel build that tests/legacy runs under
  # qemu-x86_64 -cpu core2duo, so the test checks what ships. Every ggml instruction-set option
  # is spelled out: a ggml default change cannot silently put AVX into the legacy build.
  buildFlags = builtins.fromJSON (builtins.readFile ./build-flags.json);
  variants = lib.attrNames buildFlags.llamaCpp;
  checkedVariant =
    if lib.elem llamaVariant variants then
      llamaVariant
    else
      throw "cairn package: llamaVariant must be one of ${lib.concatStringsSep ", " variants}, got '${llamaVariant}'";
  ggmlFlags = lib.mapAttrsToList lib.cmakeBool buildFlags.llamaCpp.${checkedVariant};

  # numpy 2.4's default baseline (meson option cpu-baseline=min) is x86-64-v2, which a Core 2
  # Duo lacks, and nixpkgs' numpy sets no cpu-baseline. The portable variant builds it with
  # the setup args of build-flags.json (meson-python's hook passes mesonFlags as setup-args), for
  # the whole Python package set, so llama-cpp-python, onnx and gguf get this numpy, not a second
  # one. Runtime dispatch (cpu-dispatch) still uses what the CPU has.
  numpyArgs = buildFlags.numpy.${checkedVariant}.setupArgs or [ ];
  python =
    if numpyArgs == [ ] then
      python3
    else
      python3.override {
        self = python;
        packageOverrides = final: prev: {
          numpy = prev.numpy.overridePythonAttrs (old: {
            mesonFlags = (old.mesonFlags or [ ]) ++ numpyArgs;
          });
          # nixpkgs defines numpy as numpy_2; both names are this build.
          numpy_2 = final.numpy;
        };
      };
  python3Packages = python.pkgs;

  withCmakeFlags =
    drv: flags:
    drv.overridePythonAttrs (old: {
      # scikit-build-core's setup hook passes each cmakeFlags entry, in order, after the
      # package's own flags (as -Ccmake.args=..., or in SKBUILD_CMAKE_ARGS in older nixpkgs), so
      # for the same variable the later -D wins.
      cmakeFlags = (old.cmakeFlags or [ ]) ++ flags;
    });

  llama-cpp-python =
    if checkedVariant == "cuda" then
      withCmakeFlags (python3Packages.llama-cpp-python.override { cudaSupport = true; }) (
        ggmlFlags
        # nixpkgs' derivation passes no CUDA architectures, so ggml would build its own default
        # list; cudaPackages.flags carries nixpkgs' config.cudaCapabilities ("8.9" -> "89").
        ++ [ (lib.cmakeFeature "CMAKE_CUDA_ARCHITECTURES" cudaPackages.flags.cmakeCudaArchitecturesString) ]
      )
    else
      withCmakeFlags python3Packages.llama-cpp-python ggmlFlags;

  # PyPI name -> python3Packages attribute, kept in step with pyproject.toml by
  # tests/nix/test_package_deps.py; llama-cpp-python is the variant above.
  pythonDeps = import ./python-deps.nix;
  pythonDep =
    pypiName: attr:
    if pypiName == "llama-cpp-python" then llama-cpp-python else python3Packages.${attr};

  pyFiles = dir: lib.fileset.fileFilter (f: f.hasExt "py") dir;
in
python3Packages.buildPythonApplication {
  pname = "cairn";
  inherit version;
  pyproject = true;

  # Only what the wheel and the unit tests need: editing docs or Nix files does not rebuild it.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/pyproject.toml")
      (root + "/README.md")
      (lib.fileset.fileFilter (
        f: f.hasExt "py" || f.hasExt "html" || f.hasExt "json" || f.name == "py.typed"
      ) (root + "/supervisor/cairn"))
      (root + "/tests/__init__.py")
      (root + "/tests/conftest.py")
      (pyFiles (root + "/tests/harness"))
      (pyFiles (root + "/tests/unit"))
    ];
  };

  build-system = [ python3Packages.setuptools ];
  # pyproject.toml pins setuptools exactly for pip users; nixpkgs' setuptools builds it as well.
  pypaBuildFlags = [ "--skip-dependency-check" ];
  # The runtime pins are for the PyPI venv; here nixpkgs' versions are the tested set.
  pythonRelaxDeps = true;

  dependencies = lib.mapAttrsToList pythonDep pythonDeps;

  # The unit suite is the package's checkPhase; integration tests need systemd-nspawn and root.
  nativeCheckInputs = with python3Packages; [
    jsonschema
    pytest-aiohttp
    pytest-asyncio
    pytestCheckHook
  ];
  enabledTestPaths = [ "tests/unit" ];
  preCheck = ''
    export HOME="$TMPDIR"
  '';

  pythonImportsCheck = [
    "cairn"
    "cairn.config"
    "cairn.cli"
  ];

  passthru = {
    inherit llamaVariant llama-cpp-python;
    inherit (python3Packages) numpy;
  };

  meta = {
    description = "Supervisor daemon of the Cairn self-running inference cluster";
    license = lib.licenses.mit;
    mainProgram = "cairn";
    platforms = lib.platforms.linux;
  };
}
