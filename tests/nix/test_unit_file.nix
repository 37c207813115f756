# Cases for modules/lib/unit-file.nix: settings, on the repository's own drop-in files.
let
  inherit (import ../../modules/lib) unitFile;
  model = unitFile.settings ../../modules/model-unit-hardening.conf;
  gpu = unitFile.settings ../../modules/model-unit-gpu.conf;
in
[
  {
    name = "unitFile.settings: a key once is a string";
    expr = model.DynamicUser;
    expected = "yes";
  }
  {
    name = "unitFile.settings: an empty value stays empty (reset the list)";
    expr = model.CapabilityBoundingSet;
    expected = "";
  }
  {
    name = "unitFile.settings: a key twice is a list in file order";
    expr = model.SystemCallFilter;
    expected = [
      "@system-service"
      "~@privileged"
    ];
  }
  {
    name = "unitFile.settings: comments and the section header are no keys";
    expr = builtins.filter (k: builtins.match "[A-Za-z]+" k == null) (builtins.attrNames model);
    expected = [ ];
  }
  {
    name = "unitFile.settings: a value keeps its spaces";
    expr = gpu.DeviceAllow;
    expected = [
      "char-nvidia-frontend rw"
      "char-nvidia rw"
      "char-nvidiactl rw"
      "char-nvidia-uvm rw"
    ];
  }
  {
    name = "unitFile.settings: refuses a line that is not Key=value";
    expr = unitFile.settings ./fixtures/bad-unit.conf;
    throws = "expected a `Key=value` line, a `#` comment or `[Service]`, got ' PrivateTmp=yes'";
  }
]
