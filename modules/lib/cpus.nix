# CPU lists: parse and render kernel cpu-lists, and derive the core-isolation kernel parameters.
let
  inherit (builtins)
    concatLists
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    genList
    isInt
    isList
    isString
    length
    lessThan
    match
    sort
    split
    typeOf
    ;

  show =
    v:
    if isString v then
      "'${v}'"
    else if isInt v then
      toString v
    else if isList v then
      "[ ${concatStringsSep " " (map show v)} ]"
    else
      "a ${typeOf v}";

  # Up to five digits without a leading zero, so fromJSON below can never fail uncatchably.
  number = "(0|[1-9][0-9]{0,4})";

  # Runs of consecutive cores in a sorted, duplicate-free list: [ { lo; hi; } ... ].
  runs =
    cores:
    foldl' (
      acc: c:
      let
        n = length acc;
        lastRun = elemAt acc (n - 1);
      in
      if n > 0 && lastRun.hi + 1 == c then
        genList (i: if i == n - 1 then lastRun // { hi = c; } else elemAt acc i) n
      else
        acc ++ [
          {
            lo = c;
            hi = c;
          }
        ]
    ) [ ] cores;

  # Sorted, duplicate-free list -> "2-5,12-15" (no validation; used by render and messages).
  compress =
    cores:
    concatStringsSep "," (
      map (r: if r.lo == r.hi then toString r.lo else "${toString r.lo}-${toString r.hi}") (runs cores)
    );

  # "core 4" or "cores 4-5", for messages.
  coresText = cores: "core${if length cores > 1 then "s" else ""} ${compress cores}";

  # One entry of a cpu-list string: "3" -> [ 3 ], "2-5" -> [ 2 3 4 5 ].
  parseEntry =
    where: spec: entry:
    let
      single = match number entry;
      range = match "${number}-${number}" entry;
      lo = builtins.fromJSON (elemAt range 0);
      hi = builtins.fromJSON (elemAt range 1);
    in
    if single != null then
      [ (builtins.fromJSON entry) ]
    else if range != null then
      if lo > hi then
        throw "${where}: range '${entry}' in ${show spec} is descending; write it low-high"
      else
        genList (i: lo + i) (hi - lo + 1)
    else if entry == "" then
      throw "${where}: empty entry in ${show spec} (a stray comma?)"
    else if match "-[0-9]+(-[0-9]+)?" entry != null then
      throw "${where}: negative core '${entry}' in ${show spec}; cores are numbered from 0"
    else
      throw "${where}: '${entry}' in ${show spec} is not a core number or a low-high range (expected a kernel cpu-list like \"2-5,12-15\")";

  # One element of a list spec: a non-negative integer.
  checkCore =
    where: spec: c:
    if !isInt c then
      throw "${where}: ${show c} in ${show spec} is not a core number (expected integers)"
    else if c < 0 then
      throw "${where}: negative core ${toString c} in ${show spec}; cores are numbered from 0"
    else
      c;

  # Cores listed more than once, each named once, given the sorted list with repetitions.
  repeated =
    sorted:
    let
      at = elemAt sorted;
      firstOfRepeat = i: at i == at (i + 1) && (i == 0 || at (i - 1) != at i);
    in
    map at (filter firstOfRepeat (genList (i: i) (length sorted - 1)));

  # `where` prefixes every message: the option path when a module calls it.
  parseWith =
    where: spec:
    let
      expanded =
        if isString spec then
          if spec == "" then [ ] else concatLists (map (parseEntry where spec) (filter isString (split "," spec)))
        else if isList spec then
          map (checkCore where spec) spec
        else
          throw "${where}: expected a cpu-list string like \"2-5,12-15\" or a list of integers, got ${show spec}";
      sorted = sort lessThan expanded;
      dups = if sorted == [ ] then [ ] else repeated sorted;
    in
    if dups == [ ] then
      sorted
    else
      throw "${where}: ${show spec} lists ${coresText dups} more than once; entries must not overlap";

  parse = parseWith "cairn.cpus.parse";

  render = cores: compress (parseWith "cairn.cpus.render" cores);

  # Every element of `cores` must exist on a machine with `count` cores.
  checkExist =
    where: count: cores:
    let
      missing = filter (c: c >= count) cores;
    in
    if missing == [ ] then
      cores
    else
      throw "${where}: ${coresText missing} do${if length missing > 1 then "" else "es"} not exist: cairn.tuning.cpuCount is ${toString count} (cores 0-${toString (count - 1)})";

  isolation =
    {
      cpuCount,
      isolated,
      housekeeping ? null,
    }:
    let
      count =
        if isInt cpuCount && cpuCount >= 1 then
          cpuCount
        else
          throw "cairn.tuning.cpuCount: expected a positive integer, got ${show cpuCount}";
      iso = checkExist "cairn.tuning.isolatedCores" count (parseWith "cairn.tuning.isolatedCores" isolated);
      hk =
        if housekeeping == null then
          filter (c: !elem c iso) (genList (i: i) count)
        else
          checkExist "cairn.tuning.housekeepingCores" count (
            parseWith "cairn.tuning.housekeepingCores" housekeeping
          );
      both = filter (c: elem c iso) hk;
      isoList = compress iso;
      ok =
        if both != [ ] then
          throw "cairn.tuning.housekeepingCores: ${coresText both} ${if length both > 1 then "are" else "is"} also in cairn.tuning.isolatedCores; the two sets must be disjoint"
        else if hk == [ ] then
          throw "cairn.tuning.housekeepingCores: no housekeeping core left (cpuCount ${toString count}, isolated ${isoList}); keep at least one core out of cairn.tuning.isolatedCores"
        else if elem 0 iso then
          throw "cairn.tuning.isolatedCores: core 0 is the boot CPU, which keeps time for the nohz_full cores; leave it to housekeeping"
        else
          true;
    in
    if ok then
      {
        isolated = iso;
        housekeeping = hk;
        # domain: no load balancing onto these cores (the plain isolcpus default, which naming
        # any flag switches off); managed_irq: keep kernel-managed queue interrupts off them.
        kernelParams =
          if iso == [ ] then
            [ ]
          else
            [
              "isolcpus=domain,managed_irq,${isoList}"
              "nohz_full=${isoList}"
              "rcu_nocbs=${isoList}"
              "irqaffinity=${compress hk}"
            ];
        cpuAffinity = hk;
      }
    else
      null;
in
{
  inherit parse render isolation;
}
