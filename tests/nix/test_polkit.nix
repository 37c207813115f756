# Cases for modules/lib/polkit.nix: manageUnitsRule and missingUnits, refusals included.
let
  inherit (import ../../modules/lib) polkit;
  units = {
    "cairn-rollback.service" = [ "start" ];
    "cairn-model@tiny.service" = [
      "start"
      "stop"
    ];
  };
  # The rule for user cairn and these units, on one line.
  ruleFor =
    units:
    builtins.replaceStrings [ "\n" ] [ " " ] (
      polkit.manageUnitsRule {
        user = "cairn";
        inherit units;
      }
    );
  matches = text: needle: builtins.match ".*${needle}.*" text != null;
  has = matches (ruleFor units);
in
[
  # manageUnitsRule
  {
    name = "polkit.manageUnitsRule: the allowed units are one JSON object of exact names";
    expr = has ''var allowed = \{"cairn-model@tiny.service":\["start","stop"],"cairn-rollback.service":\["start"]};'';
    expected = true;
  }
  {
    name = "polkit.manageUnitsRule: only the user's manage-units actions are handled";
    expr = has ''action.id !== "org.freedesktop.systemd1.manage-units" \|\| subject.user !== "cairn"'';
    expected = true;
  }
  {
    name = "polkit.manageUnitsRule: a name is looked up as an own property, never by pattern";
    expr = [
      (has "Object.prototype.hasOwnProperty.call\\(allowed, unit\\)")
      (has "\\.test\\(")
      (has "RegExp")
    ];
    expected = [
      true
      false
      false
    ];
  }
  {
    name = "polkit.manageUnitsRule: anything else the user asks for is refused, not passed on";
    expr = has "return polkit.Result.NO;";
    expected = true;
  }
  {
    name = "polkit.manageUnitsRule: no units allow nothing";
    expr = matches (ruleFor { }) "var allowed = \\{};";
    expected = true;
  }
  {
    name = "polkit.manageUnitsRule: refuses a glob";
    expr = ruleFor { "cairn-model@*.service" = [ "start" ]; };
    throws = "services.cairn.managedUnits: 'cairn-model@*.service' must be exact unit names";
  }
  {
    name = "polkit.manageUnitsRule: refuses a template";
    expr = ruleFor { "cairn-model@.service" = [ "start" ]; };
    throws = "'cairn-model@.service' must be exact unit names";
  }
  {
    name = "polkit.manageUnitsRule: refuses a name without a unit type";
    expr = ruleFor { "cairn-rollback" = [ "start" ]; };
    throws = "'cairn-rollback' must be exact unit names";
  }
  {
    name = "polkit.manageUnitsRule: refuses a quote in a name";
    expr = ruleFor { "a\"b.service" = [ "start" ]; };
    throws = "must be exact unit names";
  }
  {
    name = "polkit.manageUnitsRule: refuses a verb that is not a word";
    expr = ruleFor { "jupyter.service" = [ "Start now" ]; };
    throws = "services.cairn.managedUnits: 'Start now' is not a polkit verb";
  }
  {
    name = "polkit.manageUnitsRule: refuses an empty verb list";
    expr = ruleFor { "jupyter.service" = [ ]; };
    throws = "services.cairn.managedUnits.jupyter.service: expected a non-empty list of polkit verbs";
  }
  {
    name = "polkit.manageUnitsRule: refuses a user name that is not one";
    expr = polkit.manageUnitsRule {
      user = "cairn\" || true || \"";
      units = { };
    };
    throws = "services.cairn.user:";
  }
  # missingUnits
  {
    name = "polkit.missingUnits: every name with a file passes";
    expr = polkit.missingUnits {
      inherit units;
      withFile = [
        "cairn-rollback.service"
        "cairn-model@.service"
      ];
    };
    expected = [ ];
  }
  {
    name = "polkit.missingUnits: an instance without its template is missing (the hole of a host without models)";
    expr = polkit.missingUnits {
      inherit units;
      withFile = [ "cairn-rollback.service" ];
    };
    expected = [ "cairn-model@tiny.service" ];
  }
  {
    name = "polkit.missingUnits: an instance with a file of its own passes";
    expr = polkit.missingUnits {
      inherit units;
      withFile = [
        "cairn-rollback.service"
        "cairn-model@tiny.service"
      ];
    };
    expected = [ ];
  }
  {
    name = "polkit.missingUnits: another template does not count";
    expr = polkit.missingUnits {
      inherit units;
      withFile = [
        "cairn-rollback.service"
        "cairn-model@.socket"
      ];
    };
    expected = [ "cairn-model@tiny.service" ];
  }
  {
    name = "polkit.missingUnits: a name with no file at all is missing";
    expr = polkit.missingUnits {
      units."suspend.target" = [ "start" ];
      withFile = [ ];
    };
    expected = [ "suspend.target" ];
  }
  {
    name = "polkit.missingUnits: refuses a glob like the rule does";
    expr = polkit.missingUnits {
      units."cairn-model@*.service" = [ "start" ];
      withFile = [ ];
    };
    throws = "must be exact unit names";
  }
]
