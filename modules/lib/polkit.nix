# polkit: the rule that lets one user manage exactly the named systemd units, and the check
# that each of those names has a unit file.
#
# Why exact names with files (systemd src/core/dbus-manager.c, v257): StartTransientUnit asks
# polkit for `org.freedesktop.systemd1.manage-units` with the details unit = the new unit's name
# and verb = "start", the same as StartUnit; a rule cannot tell them apart. So a rule that
# allows "start" on a name with no unit file lets its user create that unit, with any
# ExecStart=, as root. systemd creates a transient unit only under a name that is not loaded
# from a file (transient_unit_from_message: unit_is_pristine, else "Unit ... already exists"),
# and it checks the main name before the auxiliary units of the call. Hence: no globs, and every
# allowed name must have a unit file (`missingUnits`).
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    isAttrs
    isList
    isString
    match
    toJSON
    typeOf
    ;

  where = "services.cairn.managedUnits";

  show = v: if isString v then "'${v}'" else "a ${typeOf v}";

  # A whole unit name: prefix, an optional instance after '@', a type. No globs, no templates.
  unitName = "[A-Za-z0-9:_.-]+(@[A-Za-z0-9:_.-]+)?\\.(service|socket|target|timer|path|mount|automount|swap|slice|scope|device)";
  isUnitName = n: isString n && match unitName n != null;

  # The polkit verbs systemd sends are lower-case words joined by '-' (start, try-restart, ...).
  isVerb = v: isString v && match "[a-z]+(-[a-z]+)*" v != null;

  checkUnits =
    units:
    let
      badNames = filter (n: !isUnitName n) (attrNames units);
      badLists = filter (n: !(isList units.${n}) || units.${n} == [ ]) (attrNames units);
      badVerbs = filter (v: !isVerb v) (builtins.concatLists (
        map (n: if isList units.${n} then units.${n} else [ ]) (attrNames units)
      ));
    in
    if !isAttrs units then
      throw "${where}: expected an attribute set of unit names to lists of verbs, got ${show units}"
    else if badNames != [ ] then
      throw "${where}: ${concatStringsSep ", " (map show badNames)} must be exact unit names (letters, digits, ':', '_', '.', '-', one '@' with an instance, and a unit type): no globs and no templates, since a name without a unit file can be created as a transient unit"
    else if badLists != [ ] then
      throw "${where}.${builtins.head badLists}: expected a non-empty list of polkit verbs"
    else if badVerbs != [ ] then
      throw "${where}: ${concatStringsSep ", " (map show badVerbs)} is not a polkit verb (lower-case words joined by '-', e.g. \"start\", \"try-restart\")"
    else
      units;

  manageUnitsRule =
    { user, units }:
    let
      checked = checkUnits units;
    in
    if !isString user || match "[a-z_][a-z0-9_-]*[$]?" user == null then
      throw "services.cairn.user: ${show user} is not a user name"
    else
      ''
        // Cairn: user ${user} may manage exactly these units with these verbs; every other unit
        // action it asks for is refused here, so no later rule can widen it. The names are exact
        // and each has a unit file: StartTransientUnit asks with the same unit name and verb
        // "start" as StartUnit, and systemd refuses to create a transient unit under a name that
        // is loaded from a file.
        polkit.addRule(function (action, subject) {
          if (action.id !== "org.freedesktop.systemd1.manage-units" || subject.user !== ${toJSON user}) {
            return polkit.Result.NOT_HANDLED;
          }
          var allowed = ${toJSON checked};
          var unit = action.lookup("unit");
          var verb = action.lookup("verb");
          if (typeof unit === "string" && Object.prototype.hasOwnProperty.call(allowed, unit) &&
              allowed[unit].indexOf(verb) !== -1) {
            return polkit.Result.YES;
          }
          return polkit.Result.NO;
        });
      '';

  # The instance's template: "a@b.service" -> "a@.service"; null for a plain name.
  templateOf =
    name:
    let
      m = match "([^@]+)@[^@]+\\.([a-z]+)" name;
    in
    if m == null then null else "${builtins.elemAt m 0}@.${builtins.elemAt m 1}";

  # The allowed names (of `units`, as for manageUnitsRule) that have no unit file among
  # `withFile` (unit names with a file, templates as "a@.service"); an instance counts when its
  # template has a file.
  missingUnits =
    { units, withFile }:
    filter (n: !(elem n withFile) && !(elem (templateOf n) withFile)) (attrNames (checkUnits units));
in
{
  inherit manageUnitsRule missingUnits;
}
