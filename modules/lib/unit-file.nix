# systemd drop-in files as NixOS serviceConfig: `Key=value` lines, `#` comments, `[Service]`.
let
  inherit (builtins)
    concatMap
    elemAt
    filter
    head
    isString
    length
    match
    readFile
    split
    substring
    zipAttrsWith
    ;

  # A key given twice becomes a list in file order, which systemd reads the same way (and NixOS
  # renders a list as one line per element). The same files are installed verbatim by the
  # real-systemd integration tests: one source for both.
  settings =
    file:
    let
      entry =
        line:
        let
          kv = match "([A-Za-z]+)=(.*)" line;
        in
        if line == "" || substring 0 1 line == "#" || line == "[Service]" then
          [ ]
        else if kv == null then
          throw "${toString file}: expected a `Key=value` line, a `#` comment or `[Service]`, got '${line}'"
        else
          [ { ${elemAt kv 0} = elemAt kv 1; } ];
      lines = filter isString (split "\n" (readFile file));
    in
    zipAttrsWith (_: values: if length values == 1 then head values else values) (
      concatMap entry lines
    );
in
{
  inherit settings;
}
