# CPU isolation for inference: isolcpus/nohz_full/rcu_nocbs/irqaffinity and systemd's CPUAffinity.
{ config, lib, ... }:
let
  inherit (lib)
    concatStringsSep
    filter
    literalMD
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.cairn.tuning;
  cairnLib = import ./lib;
  inherit (cairnLib) cpus;

  cpuListType = types.either types.str (types.listOf types.ints.unsigned);

  show = spec: if builtins.isString spec then "\"${spec}\"" else "[ ${concatStringsSep " " (map toString spec)} ]";

  # A parsed, sorted core list, or null when the spec is not a valid cpu-list. deepSeq: the
  # parser is lazy per element, and tryEval only catches what it forces.
  tryParse =
    spec:
    let
      r = builtins.tryEval (
        let
          v = cpus.parse spec;
        in
        builtins.deepSeq v v
      );
    in
    if r.success then r.value else null;

  count = cfg.cpuCount;
  iso = tryParse cfg.isolatedCores;
  hkGiven = cfg.housekeepingCores != null;
  hkParsed = if hkGiven then tryParse cfg.housekeepingCores else null;
  allCores = if count == null then [ ] else lib.range 0 (count - 1);
  hk =
    if hkGiven then
      hkParsed
    else if iso == null then
      null
    else
      filter (c: !(lib.elem c iso)) allCores;

  missing = cores: if cores == null || count == null then [ ] else filter (c: c >= count) cores;
  overlap = if iso == null || hk == null then [ ] else filter (c: lib.elem c iso) hk;
  render = cores: cpus.render cores;

  checks = [
    {
      assertion = count != null;
      message = "cairn.tuning.cpuCount: must be set when cairn.tuning.enable is true (the number of logical CPUs of this host class, e.g. 20)";
    }
    {
      assertion = iso != null;
      message = "cairn.tuning.isolatedCores: ${show cfg.isolatedCores} is not a valid cpu-list (expected a kernel cpu-list like \"2-5,12-15\" or a list of core numbers, each core once)";
    }
    {
      assertion = !hkGiven || hkParsed != null;
      message = "cairn.tuning.housekeepingCores: ${show cfg.housekeepingCores} is not a valid cpu-list (expected a kernel cpu-list like \"0-1,6-11\" or a list of core numbers, each core once)";
    }
    {
      assertion = missing iso == [ ];
      message = "cairn.tuning.isolatedCores: core(s) ${render (missing iso)} do not exist: cairn.tuning.cpuCount is ${toString count}";
    }
    {
      assertion = missing hk == [ ];
      message = "cairn.tuning.housekeepingCores: core(s) ${render (missing hk)} do not exist: cairn.tuning.cpuCount is ${toString count}";
    }
    {
      assertion = overlap == [ ];
      message = "cairn.tuning.housekeepingCores: core(s) ${render overlap} are also in cairn.tuning.isolatedCores; the two sets must be disjoint";
    }
    {
      # Without cpuCount the derived set is unknown; that is reported above.
      assertion = hk == null || hk != [ ] || (count == null && !hkGiven);
      message = "cairn.tuning.housekeepingCores: no housekeeping core left; keep at least one core out of cairn.tuning.isolatedCores";
    }
    {
      # Tuning without an isolated core would only confine everything to the housekeeping set.
      assertion = iso == null || iso != [ ];
      message = "cairn.tuning.isolatedCores: empty; isolate at least one core when cairn.tuning.enable is true (e.g. \"2-5,12-15\")";
    }
    {
      assertion = iso == null || !(lib.elem 0 iso);
      message = "cairn.tuning.isolatedCores: core 0 is the boot CPU, which keeps time for the nohz_full cores; leave it to housekeeping";
    }
  ];

  valid = lib.all (c: c.assertion) checks;

  # The pure lib renders the parameters; it is only called once every assertion holds, so a bad
  # value is reported by the assertion (with the option path) rather than by a throw.
  result =
    if cfg.enable && valid then
      cpus.isolation (
        {
          cpuCount = count;
          isolated = cfg.isolatedCores;
        }
        // lib.optionalAttrs hkGiven { housekeeping = cfg.housekeepingCores; }
      )
    else
      null;
in
{
  options.cairn.tuning = {
    enable = mkEnableOption "CPU isolation of the inference cores";

    cpuCount = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 20;
      description = ''
        Number of logical CPUs of this host class (cores 0 to cpuCount-1). Every core named in
        {option}`cairn.tuning.isolatedCores` and {option}`cairn.tuning.housekeepingCores` must
        exist. Required when {option}`cairn.tuning.enable` is set.
      '';
    };

    isolatedCores = mkOption {
      type = cpuListType;
      default = [ ];
      example = "2-5,12-15";
      description = ''
        Cores taken away from the scheduler for inference threads, as a kernel cpu-list string
        (`"2-5,12-15"`) or a list of core numbers. They are rendered into `isolcpus=`,
        `nohz_full=` and `rcu_nocbs=` on the kernel command line. Core 0 cannot be isolated.
        Isolated cores are not load balanced: every inference thread must be pinned to its own
        core.
      '';
    };

    housekeepingCores = mkOption {
      type = types.nullOr cpuListType;
      default = null;
      defaultText = literalMD "every core of `0` to `cpuCount - 1` not in `isolatedCores`";
      example = "0-1,6-11,16-19";
      description = ''
        Cores that run everything else: interrupts (`irqaffinity=`) and every systemd unit
        (systemd's `CPUAffinity=`). Must be disjoint from
        {option}`cairn.tuning.isolatedCores` and hold at least one core.
      '';
    };

    isolated = mkOption {
      type = types.listOf types.ints.unsigned;
      readOnly = true;
      default = if result == null then [ ] else result.isolated;
      defaultText = literalMD "`isolatedCores`, parsed and sorted";
      example = [
        2
        3
        4
        5
      ];
      description = "The isolated cores as a sorted list, for modules that pin inference threads.";
    };

    housekeeping = mkOption {
      type = types.listOf types.ints.unsigned;
      readOnly = true;
      default = if result == null then [ ] else result.housekeeping;
      defaultText = literalMD "`housekeepingCores`, parsed and sorted (every core not isolated when it is `null`)";
      example = [
        0
        1
      ];
      description = "The housekeeping cores as a sorted list.";
    };
  };

  config = mkIf cfg.enable {
    assertions = checks;

    boot.kernelParams = if result == null then [ ] else result.kernelParams;

    # PID 1 and everything it starts stay off the isolated cores unless a unit asks otherwise.
    systemd.settings.Manager = mkIf (result != null) {
      CPUAffinity = render result.cpuAffinity;
    };
  };
}
