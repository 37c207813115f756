# Defaults of the services.cairn.models.<name> options, read from where they are written: the
# supervisor's ModelConfig (supervisor/cairn/config.py), through its JSON Schema committed as
# config-schema.json (`cairn config schema`; tests/nix/test_model_defaults.py keeps it fresh).
# Plain Nix, no lib: `kind` has no default in the schema, so the module keeps its own.
let
  schema = builtins.fromJSON (builtins.readFile ./config-schema.json);
  props = schema."$defs".ModelConfig.properties;
  # Seconds are floats in the schema and whole numbers in the options (TimeoutStartSec=).
  whole =
    key:
    let
      value = props.${key}.default;
      int = builtins.floor value;
    in
    if int == value then
      int
    else
      throw "modules/model-defaults.nix: ModelConfig.${key} defaults to ${toString value}, not a whole number";
in
{
  context = props.context.default;
  threads = props.threads.default;
  gpuLayers = props.gpu_layers.default;
  batch = props.batch.default;
  slots = props.slots.default;
  queue = props.queue.default;
  idleTtl = whole "idle_ttl";
  embedding = props.embedding.default;
  startupTimeout = whole "startup_timeout";
  requestTimeout = whole "request_timeout";
  cpus = props.cpus.default;
}
