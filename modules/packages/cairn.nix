# The cairn supervisor package; llama-cpp-python built portable (no AVX, legacy nodes) or with CUDA.
{
  lib,
  python3Packages,
  # "portable": SSE2 baseline for Core 2 Duo nodes (no SSE4.2/AVX/AVX2/FMA/F16C, GGML_NATIVE off).
  # "cuda": CUDA on, CPU path at x86-64-v3 (the RTX 4070 workstation has AVX2).
  llamaVariant ? "portable",
}:
let
  root = ../..;

  # One version, read from the Python package (`cairn.__version__`), as setuptools does.
  version = lib.head (
    builtins.match ''.*__version__ = "([^"]+)".*'' (builtins.readFile (root + "/supervisor/cairn/__init__.py"))
  );

  # Inside Nix builds SOURCE_DATE_EPOCH is set, so ggml's instruction-set options already default
  # to OFF once GGML_NATIVE is off; they are spelled out so a ggml default change cannot
  # silently put AVX into the legacy build.
  x86Features = [
    "GGML_SSE42"
    "GGML_AVX"
    "GGML_AVX2"
    "GGML_BMI2"
    "GGML_FMA"
    "GGML_F16C"
  ];
  avx512Features = [
    "GGML_AVX_VNNI"
    "GGML_AVX512"
    "GGML_AVX512_VBMI"
    "GGML_AVX512_VNNI"
    "GGML_AVX512_BF16"
  ];
  withCmakeFlags =
    drv: flags:
    drv.overridePythonAttrs (old: {
      # scikit-build-core's setup hook turns each cmakeFlags entry, in order, into its own
      # `-Ccmake.args=...` appended to pypaBuildFlags, so these come after the package's own flags
      # and, for the same variable, the later -D wins.
      cmakeFlags = (old.cmakeFlags or [ ]) ++ flags;
    });

  llamaVariants = {
    portable = withCmakeFlags python3Packages.llama-cpp-python (
      [ (lib.cmakeBool "GGML_NATIVE" false) ]
      ++ map (f: lib.cmakeBool f false) (x86Features ++ avx512Features)
    );
    cuda = withCmakeFlags (python3Packages.llama-cpp-python.override { cudaSupport = true; }) (
      [ (lib.cmakeBool "GGML_NATIVE" false) ]
      ++ map (f: lib.cmakeBool f true) x86Features
      ++ map (f: lib.cmakeBool f false) avx512Features
    );
  };
  llama-cpp-python =
    llamaVariants.${llamaVariant}
      or (throw "cairn package: llamaVariant must be one of ${lib.concatStringsSep ", " (lib.attrNames llamaVariants)}, got '${llamaVariant}'");

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
  };

  meta = {
    description = "Supervisor daemon of the Cairn self-running inference cluster";
    license = lib.licenses.mit;
    mainProgram = "cairn";
    platforms = lib.platforms.linux;
  };
}
