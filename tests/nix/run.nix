# Runs one case file under tryEval, so a throwing case is a result, not an aborted evaluation.
# A case is { name; expr; expected; } or { name; expr; throws = "<part of the message>"; }.
file:
let
  run =
    case:
    let
      r = builtins.tryEval (builtins.deepSeq case.expr case.expr);
    in
    {
      inherit (case) name;
      threw = !r.success;
    }
    // (
      if case ? throws then
        {
          kind = "throws";
          inherit (case) throws;
        }
      else
        {
          kind = "value";
          value = if r.success then r.value else null;
          inherit (case) expected;
        }
    );
in
map run (import file)
