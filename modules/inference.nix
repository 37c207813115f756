# Model workers: services.cairn.models as socket-activated, hardened cairn-model@NAME units.
{ config, lib, ... }:
let
  inherit (lib)
    concatMap
    concatMapStringsSep
    filter
    length
    literalExpression
    mapAttrs'
    mapAttrsToList
    mkIf
    mkMerge
    mkOption
    nameValuePair
    optional
    optionalAttrs
    types
    unique
    ;

  cfg = config.services.cairn;
  tuning = config.cairn.tuning;
  # Written once, in the supervisor's ModelConfig; read here through its committed JSON Schema.
  defaults = import ./model-defaults.nix;

  # systemd listens at <socketDir>/<name>.sock; the supervisor connects there (inference.socket_dir).
  socketDir = "/run/cairn/models";
  socketUnits = mapAttrsToList (name: _: "cairn-model@${name}.socket") cfg.models;

  gpuHost = lib.elem "nvidia" config.services.xserver.videoDrivers;
  # Only GGUF workers offload. The package's onnxruntime is nixpkgs' CPU build (python3Packages
  # .onnxruntime follows the top-level onnxruntime, whose cudaSupport is config.cudaSupport, off
  # on every host here), so an ONNX worker gets no device it could not use.
  usesGpu = m: gpuHost && m.kind == "gguf" && m.gpuLayers > 0;

  # The drop-in files are read as serviceConfig by modules/lib/unit-file.nix; the integration
  # tests install the same files verbatim.
  inherit (import ./lib) unitFile;
  hardening = unitFile.settings ./model-unit-hardening.conf;
  gpuAccess = unitFile.settings ./model-unit-gpu.conf;

  # The cores a worker's unit may run on; empty leaves the manager's CPUAffinity (housekeeping).
  cores =
    m:
    if m.cpus == null then
      [ ]
    else if m.cpus == "isolated" then
      tuning.isolated
    else
      m.cpus;

  # One entry of the supervisor's `models` list, with the config schema's key names.
  toSetting =
    name: m:
    {
      inherit name;
      # A path literal is copied into the store here; a derivation is its output path.
      path = "${m.file}";
      inherit (m)
        kind
        context
        threads
        batch
        slots
        queue
        embedding
        ;
      gpu_layers = m.gpuLayers;
      idle_ttl = m.idleTtl;
      startup_timeout = m.startupTimeout;
      request_timeout = m.requestTimeout;
    }
    // optionalAttrs (m.cpus != null) { inherit (m) cpus; };

  optionPath =
    name:
    lib.showOption [
      "services"
      "cairn"
      "models"
      name
    ];

  modelChecks =
    name: m:
    let
      opt = optionPath name;
      list = if builtins.isList m.cpus then m.cpus else [ ];
      missing = if tuning.cpuCount == null then [ ] else filter (c: c >= tuning.cpuCount) list;
    in
    [
      {
        assertion = builtins.match "[A-Za-z0-9][A-Za-z0-9._-]{0,63}" name != null;
        message = "${opt}: the model name '${name}' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names cairn-model@${name}.service)";
      }
      {
        assertion = m.cpus != "isolated" || tuning.enable;
        message = "${opt}.cpus: \"isolated\" needs cairn.tuning.enable (no core is isolated otherwise)";
      }
      {
        assertion = m.cpus != "isolated" || !tuning.enable || m.threads <= length tuning.isolated;
        message = "${opt}.threads: ${toString m.threads} threads need as many isolated cores, cairn.tuning.isolatedCores has ${toString (length tuning.isolated)}";
      }
      {
        assertion = list == [ ] || length list >= m.threads;
        message = "${opt}.cpus: ${toString (length list)} cores for ${toString m.threads} threads; each thread needs its own core";
      }
      {
        assertion = unique list == list;
        message = "${opt}.cpus: a core is listed twice";
      }
      {
        assertion = missing == [ ];
        message = "${opt}.cpus: core(s) ${toString missing} do not exist: cairn.tuning.cpuCount is ${toString tuning.cpuCount}";
      }
    ];

  modelOptions = {
    options = {
      file = mkOption {
        type = types.path;
        example = literalExpression ''
          pkgs.fetchurl {
            url = "https://huggingface.co/<org>/<repo>/resolve/main/<model>.Q4_K_M.gguf";
            hash = lib.fakeHash; # the first build fails and prints the real hash
          }
        '';
        description = ''
          The model file (required, no default). One of:

          - a Nix path (`./models/tiny.gguf`): copied into the store when the system is built;
          - a derivation, typically `pkgs.fetchurl { url = ...; hash = "sha256-..."; }`: fetched
            once, checked against the hash, and part of the system closure;
          - an absolute path on the node as a string (`"/var/lib/models/big.gguf"`): used in
            place and never copied; it must exist on the node, be readable by every user (the
            worker runs as a dynamic user) and lie outside `/home`.

          Store paths travel with the system, so on netbooted classes they go into the netboot
          image, which is held in RAM: keep large models out of those images.
        '';
      };

      kind = mkOption {
        type = types.enum [
          "gguf"
          "onnx"
        ];
        default = "gguf";
        example = "onnx";
        description = "The engine: `gguf` (llama.cpp, chat and completions) or `onnx` (onnxruntime, embeddings).";
      };

      context = mkOption {
        type = types.ints.between 64 1048576;
        default = defaults.context;
        example = 8192;
        description = "Context size in tokens, shared by the slots (GGUF).";
      };

      threads = mkOption {
        type = types.ints.between 1 1024;
        default = defaults.threads;
        example = 4;
        description = "Compute threads, each pinned to its own core of `cpus`.";
      };

      gpuLayers = mkOption {
        type = types.ints.between 0 4096;
        default = defaults.gpuLayers;
        example = 99;
        description = ''
          Layers to offload to an NVIDIA GPU (GGUF). The worker offloads only when NVML sees a
          GPU and the package is the CUDA build, and says otherwise in `/status`. On hosts with
          the NVIDIA driver (`services.xserver.videoDrivers = [ "nvidia" ]`), a GGUF worker with
          gpuLayers > 0 gets the NVIDIA devices (`model-unit-gpu.conf`); all other workers see
          no device. ONNX workers run on the CPU everywhere: the package's onnxruntime is built
          without CUDA.
        '';
      };

      batch = mkOption {
        type = types.ints.between 1 65536;
        default = defaults.batch;
        example = 256;
        description = "Tokens per decode batch (GGUF).";
      };

      slots = mkOption {
        type = types.ints.between 1 1024;
        default = defaults.slots;
        example = 8;
        description = "Requests decoded together, as parallel sequences in one context (GGUF).";
      };

      queue = mkOption {
        type = types.ints.between 0 65536;
        default = defaults.queue;
        example = 64;
        description = "Requests waiting behind busy slots; one more is answered 429 with `Retry-After`.";
      };

      idleTtl = mkOption {
        type = types.ints.positive;
        default = defaults.idleTtl;
        example = 900;
        description = ''
          Seconds without requests after which the supervisor's sleeper may stop the worker
          (`idle_ttl`); its socket keeps listening, so the next request starts it again.
        '';
      };

      embedding = mkOption {
        type = types.bool;
        default = defaults.embedding;
        example = true;
        description = "Whether this GGUF model is an embedding model: it serves `/v1/embeddings` (mean-pooled, normalised vectors) instead of completions.";
      };

      startupTimeout = mkOption {
        type = types.ints.positive;
        default = defaults.startupTimeout;
        example = 600;
        description = "Seconds the worker may take to load the model: the supervisor's wait, and the unit's `TimeoutStartSec=`.";
      };

      requestTimeout = mkOption {
        type = types.ints.between 1 86400;
        default = defaults.requestTimeout;
        example = 120;
        description = ''
          Seconds one request may take in the worker (`request_timeout`); then the client gets
          `504` and the connection to the worker is closed. A worker that hangs is restarted by
          the supervisor's model probe (`settings.heal.probe_timeout`).
        '';
      };

      cpus = mkOption {
        type = types.nullOr (
          types.either (types.enum [ "isolated" ]) (types.nonEmptyListOf types.ints.unsigned)
        );
        default = defaults.cpus;
        example = "isolated";
        description = ''
          Cores of the worker: `"isolated"` (the cores of {option}`cairn.tuning.isolatedCores`,
          which must be enabled), a list of core numbers, or `null` (wherever the unit runs:
          the housekeeping cores when tuning is on). The unit's `CPUAffinity=` is set to these
          cores, and the worker pins its first `threads` compute threads one per core.
        '';
      };
    };
  };
in
{
  imports = [
    ./supervisor.nix
    ./tuning.nix
  ];

  options.services.cairn.models = mkOption {
    type = types.attrsOf (types.submodule modelOptions);
    default = { };
    example = literalExpression ''
      {
        # Built with the system from a local file.
        tiny = { file = ./models/tiny.gguf; cpus = "isolated"; };
        # Fetched once and pinned by its hash.
        chat = {
          file = pkgs.fetchurl {
            url = "https://huggingface.co/<org>/<repo>/resolve/main/<model>.Q4_K_M.gguf";
            hash = lib.fakeHash; # the failed build prints the real hash
          };
          context = 4096;
          threads = 4;
          cpus = "isolated";
          gpuLayers = 99;
        };
        embed = { file = ./models/embed.onnx; kind = "onnx"; };
      }
    '';
    description = ''
      Models this node serves, by name. Each becomes `cairn-model@NAME.socket` (listening at
      `/run/cairn/models/NAME.sock`, connectable by the supervisor's group only) and
      `cairn-model@NAME.service`, which the first connection starts: `cairn worker` loads the
      model, sends `READY=1` and serves, as a dynamic user under the sandbox of
      `modules/model-unit-hardening.conf`, pinned to `cpus`. The models are rendered
      into {option}`services.cairn.settings` (`models`, and `inference.workers = "systemd"`),
      which `cairn config check` validates when the system is built.
    '';
  };

  config = mkIf (cfg.enable && cfg.models != { }) {
    assertions = concatMap (name: modelChecks name cfg.models.${name}) (lib.attrNames cfg.models) ++ [
      {
        assertion = lib.all (m: cfg.models ? ${m.name or ""}) (cfg.settings.models or [ ]);
        message = "services.cairn.settings.models: models are declared in services.cairn.models, which gives each its units; remove the entries set directly in settings";
      }
    ];

    warnings = concatMap (
      name:
      let
        m = cfg.models.${name};
      in
      optional (m.gpuLayers > 0 && !gpuHost) "${optionPath name}.gpuLayers: ${toString m.gpuLayers} layers asked for, but this host has no NVIDIA driver (services.xserver.videoDrivers); the worker runs on the CPU"
    ) (lib.attrNames cfg.models);

    # The supervisor may start, stop and heal the workers of the declared models, each by its
    # exact name: the templates above give every one of them a unit file (supervisor.nix
    # asserts that), so none can be created as a transient unit. A host without models allows
    # no cairn-model@ name at all.
    services.cairn.managedUnits = mkMerge (
      mapAttrsToList (name: _: {
        "cairn-model@${name}.service" = [
          "start"
          "stop"
          "restart"
          "try-restart"
          "kill"
          "reset-failed"
          "freeze"
          "thaw"
        ];
        "cairn-model@${name}.socket" = [
          "start"
          "stop"
          "restart"
          "reset-failed"
        ];
      }) cfg.models
    );

    services.cairn.settings = {
      inference = {
        workers = "systemd";
        socket_dir = socketDir;
      };
      models = mapAttrsToList toSetting cfg.models;
    };

    # The sockets create it too; this keeps it there for the supervisor, whose / is read-only,
    # even when no socket came up.
    systemd.tmpfiles.rules = [
      "d /run/cairn 0755 root root -"
      "d ${socketDir} 0755 root root -"
    ];

    systemd.sockets = mkMerge [
      {
        "cairn-model@" = {
          description = "Socket of Cairn model worker %i";
          listenStreams = [ "${socketDir}/%i.sock" ];
          socketConfig = {
            # Only root and the supervisor's group may connect; the worker inherits the socket.
            SocketUser = "root";
            SocketGroup = cfg.group;
            SocketMode = "0660";
            DirectoryMode = "0755";
            RemoveOnStop = true;
          };
        };
      }
      # Instances of the template: a drop-in each, enabled at boot.
      (mapAttrs' (
        name: _:
        nameValuePair "cairn-model@${name}" {
          overrideStrategy = "asDropin";
          wantedBy = [ "sockets.target" ];
        }
      ) cfg.models)
    ];

    systemd.services = mkMerge [
      {
        # The supervisor connects to the sockets; it never starts a worker itself.
        cairn = {
          wants = socketUnits;
          after = socketUnits;
        };

        "cairn-model@" = {
          description = "Cairn model worker %i";
          # Started directly (systemctl start), it still gets its listening socket.
          requires = [ "cairn-model@%i.socket" ];
          after = [ "cairn-model@%i.socket" ];
          # A dynamic user has no home of its own; Python's Path.home() and libraries that cache
          # under ~ (CUDA's ~/.nv) get the private /tmp, which goes away with the worker.
          environment.HOME = "/tmp";
          serviceConfig = hardening // {
            # READY=1 only once the model is loaded, so the first request waits for it.
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${lib.getExe cfg.package} worker --config ${cfg.configFile} --model %i";
            # A crash is restarted; a load or config error (exit 1, 2) is not: retrying cannot
            # fix it, and the next request starts the worker again through the socket anyway.
            Restart = "on-abnormal";
            RestartSec = "1s";
            TimeoutStopSec = "10s";
          };
        };
      }
      (mapAttrs' (
        name: m:
        let
          pinned = cores m;
        in
        nameValuePair "cairn-model@${name}" {
          overrideStrategy = "asDropin";
          serviceConfig = {
            TimeoutStartSec = "${toString m.startupTimeout}s";
          }
          // optionalAttrs (pinned != [ ]) {
            # The worker pins each compute thread itself (OpenMP places), and libgomp needs
            # those cores in its mask when it loads. The housekeeping cores are there too: after
            # the load the worker moves its event loop (request parsing, every streamed token)
            # onto them, off the compute cores (pinning.leave_cores).
            CPUAffinity = concatMapStringsSep " " toString (unique (pinned ++ tuning.housekeeping));
          }
          // optionalAttrs (usesGpu m) gpuAccess;
        }
      ) cfg.models)
    ];
  };
}
