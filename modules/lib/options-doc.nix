# docs/options.md from the list nixpkgs' `lib.optionAttrSetToDocList` makes of the options, as
# deterministic Markdown. The flake's `options-md` and tests/nix/options-doc.nix (the same
# declarations, evaluated with a nixpkgs lib snapshot) both render with this, so they agree.
let
  inherit (builtins)
    concatStringsSep
    elemAt
    filter
    foldl'
    genList
    head
    isAttrs
    isBool
    isList
    isString
    length
    lessThan
    listToAttrs
    map
    match
    sort
    split
    stringLength
    tail
    typeOf
    ;

  fn = "cairn.optionsDoc.render";
  fail = name: msg: throw "${fn}: option `${name}`: ${msg}";
  describe = v: if isAttrs v then "a set" else "a ${typeOf v}";

  header = ''
    # NixOS options

    Every option of Cairn's NixOS modules (`cairn.*` and `services.cairn.*`), generated from their
    declarations by `modules/lib/options-doc.nix`; do not edit. Regenerate with
    `make options-doc NIXPKGS_LIB=<nixpkgs.lib checkout>`, or with Nix:
    `nix build .#options-md && cp result docs/options.md` (`nix flake check` fails when this file
    is stale).
  '';

  lines = s: filter isString (split "\n" s);
  isBlank = l: match "[ \t]*" l != null;
  dropBlank = ls: if ls != [ ] && isBlank (head ls) then dropBlank (tail ls) else ls;
  reverse = ls: genList (i: elemAt ls (length ls - 1 - i)) (length ls);
  # Without leading and trailing blank lines (a '' string ends with a newline).
  trim = s: concatStringsSep "\n" (reverse (dropBlank (reverse (dropBlank (lines s)))));

  # MyST roles (`{option}`cairn.tuning.enable``) become plain code spans.
  unrole = s: concatStringsSep "" (map (x: if isList x then "`" else x) (split "[{][a-z]+[}]`" s));

  max = a: b: if a > b then a else b;
  longestTicks =
    s: foldl' (m: x: if isList x then max m (stringLength (head x)) else m) 0 (split "(`+)" s);
  ticks = n: concatStringsSep "" (genList (_: "`") n);
  inlineCode =
    s:
    let
      f = ticks (longestTicks s + 1);
      pad = if match "`.*|.*`" s != null then " " else "";
    in
    "${f}${pad}${s}${pad}${f}";
  codeBlock =
    s:
    let
      f = ticks (max 3 (longestTicks s + 1));
    in
    "${f}nix\n${s}\n${f}";

  # A default or example as optionAttrSetToDocList gives it: a literalExpression (plain values
  # are rendered to one with lib.generators.toPretty) or literalMD.
  literal =
    name: what: v:
    if !(isAttrs v && v ? _type && isString (v.text or null)) then
      fail name "${what}: expected a literalExpression or literalMD ({ _type; text; }), got ${describe v}"
    else if v._type == "literalExpression" then
      let
        t = trim v.text;
      in
      if length (lines t) == 1 then " ${inlineCode t}" else "\n\n${codeBlock t}"
    else if v._type == "literalMD" then
      "\n\n${unrole (trim v.text)}"
    else
      fail name "${what}: _type '${toString v._type}' is neither literalExpression nor literalMD";

  flag = name: attr: o: {
    name = attr;
    value =
      let
        v = o.${attr};
      in
      if isBool v then v else fail name "${attr}: expected a bool, got ${describe v}";
  };

  # Where a store path would make the document differ with every change of its source.
  storePath = "${builtins.storeDir}/[0-9abcdfghijklmnpqrsvwxyz]{32}-";

  section =
    o:
    let
      inherit (o) name;
      description = o.description or null;
      text =
        concatStringsSep "\n\n" (
          [
            "## `${name}`"
            (
              if !isString description || trim description == "" then
                fail name "no description"
              else
                unrole (trim description)
            )
            (
              if isString (o.type or null) then
                "*Type:* ${o.type}"
              else
                fail name "type: expected its description, got ${describe (o.type or null)}"
            )
          ]
          ++ (if o.readOnly or false then [ "*Read only.*" ] else [ ])
          ++ (if o ? default then [ "*Default:*${literal name "default" o.default}" ] else [ ])
          ++ (if o ? example then [ "*Example:*${literal name "example" o.example}" ] else [ ])
        )
        + "\n";
    in
    if length (split storePath text) > 1 then
      fail name "its documentation names a store path; give the option a defaultText (lib.literalExpression or lib.literalMD) or drop the path"
    else
      text;

  checked =
    o:
    if !(isAttrs o && isString (o.name or null)) then
      throw "${fn}: expected the entries of lib.optionAttrSetToDocList ({ name; description; type; ... }), got ${describe o}"
    else
      o
      // listToAttrs (
        map (attr: flag o.name attr o) (filter (attr: o ? ${attr}) [
          "visible"
          "internal"
          "readOnly"
        ])
      );

  shown = o: (o.visible or true) && !(o.internal or false);

  # By option path, component by component, so `a.b` is followed by `a.b.<name>.c`, not by `a.b-c`.
  key = o: if isList (o.loc or null) then o.loc else [ o.name ];
  lessPath =
    a: b:
    let
      la = length a;
      lb = length b;
      go =
        i:
        if i == la then
          i != lb
        else if i == lb then
          false
        else if elemAt a i == elemAt b i then
          go (i + 1)
        else
          lessThan (elemAt a i) (elemAt b i);
    in
    go 0;

  render =
    docList:
    let
      options = sort (a: b: lessPath (key a) (key b)) (filter shown (map checked docList));
      names = map (o: o.name) options;
      twice = filter (i: elemAt names i == elemAt names (i + 1)) (
        genList (i: i) (max 0 (length names - 1))
      );
    in
    if !isList docList then
      throw "${fn}: expected the list lib.optionAttrSetToDocList returns, got ${describe docList}"
    else if twice != [ ] then
      fail (elemAt names (head twice)) "listed twice"
    else
      concatStringsSep "\n" ([ header ] ++ map section options);
in
{
  inherit render;
}
