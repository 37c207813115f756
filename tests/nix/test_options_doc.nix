# Cases for modules/lib/options-doc.nix: render, on doc lists shaped like
# lib.optionAttrSetToDocList's (defaults and examples already literalExpression / literalMD).
let
  inherit (import ../../modules/lib) optionsDoc;
  header = optionsDoc.render [ ];

  lit = text: {
    _type = "literalExpression";
    inherit text;
  };
  md = text: {
    _type = "literalMD";
    inherit text;
  };

  # What optionAttrSetToDocList gives for one option; `declarations` is never rendered.
  # `name` split at its dots is the option's `loc`.
  opt =
    name: attrs:
    {
      inherit name;
      loc = builtins.filter builtins.isString (builtins.split "[.]" name);
      description = "About ${name}.";
      declarations = [ "/nix/store/00000000000000000000000000000000-source/modules/x.nix" ];
      internal = false;
      visible = true;
      readOnly = false;
      type = "boolean";
    }
    // attrs;

  headings =
    docList:
    builtins.filter (l: builtins.isString l && builtins.substring 0 3 l == "## ") (
      builtins.split "\n" (optionsDoc.render docList)
    );
in
[
  {
    name = "optionsDoc.render: no option gives the title and how to regenerate";
    expr =
      builtins.match "# NixOS options\n\n.*make options-doc NIXPKGS_LIB=.*nix build [.]#options-md.*\n" header
      != null;
    expected = true;
  }
  {
    name = "optionsDoc.render: one section per option: description, type, default, example";
    expr = optionsDoc.render [
      (opt "cairn.x.enable" {
        description = "Whether to enable x.\n";
        default = lit "false";
        example = lit "true";
      })
    ];
    expected = header + ''

      ## `cairn.x.enable`

      Whether to enable x.

      *Type:* boolean

      *Default:* `false`

      *Example:* `true`
    '';
  }
  {
    name = "optionsDoc.render: read-only marker, literalMD default, multi-line example as a nix block";
    expr = optionsDoc.render [
      (opt "cairn.x.cores" {
        description = ''
          The cores.

          Sorted.
        '';
        type = "list of (unsigned integer, meaning >=0)";
        readOnly = true;
        default = md "`cores`, parsed\n";
        example = lit "[\n  2\n  3\n]";
      })
    ];
    expected = header + ''

      ## `cairn.x.cores`

      The cores.

      Sorted.

      *Type:* list of (unsigned integer, meaning >=0)

      *Read only.*

      *Default:*

      `cores`, parsed

      *Example:*

      ```nix
      [
        2
        3
      ]
      ```
    '';
  }
  {
    name = "optionsDoc.render: no default or example, no line for them";
    expr = optionsDoc.render [ (opt "cairn.x.file" { type = "absolute path"; }) ];
    expected = header + ''

      ## `cairn.x.file`

      About cairn.x.file.

      *Type:* absolute path
    '';
  }
  {
    name = "optionsDoc.render: internal and invisible options are left out";
    expr = headings [
      (opt "cairn.shown" { })
      (opt "cairn.internal" { internal = true; })
      (opt "cairn.hidden" { visible = false; })
      # Left out before it is checked: the module system's own options have no description.
      (opt "cairn.x._module.args" {
        internal = true;
        description = null;
      })
    ];
    expected = [ "## `cairn.shown`" ];
  }
  {
    name = "optionsDoc.render: sorted by option path, sub-options right after their option";
    expr = headings [
      (opt "services.cairn.enable" { })
      (opt "cairn.b-c" { })
      (opt "cairn.b.<name>.c" { })
      (opt "cairn.b" { })
      (opt "cairn.a" { })
    ];
    expected = [
      "## `cairn.a`"
      "## `cairn.b`"
      "## `cairn.b.<name>.c`"
      "## `cairn.b-c`"
      "## `services.cairn.enable`"
    ];
  }
  {
    name = "optionsDoc.render: the same list in any order gives the same document";
    expr =
      optionsDoc.render [
        (opt "cairn.a" { })
        (opt "cairn.b" { })
      ] == optionsDoc.render [
        (opt "cairn.b" { })
        (opt "cairn.a" { })
      ];
    expected = true;
  }
  {
    name = "optionsDoc.render: MyST roles become code spans, in descriptions and literalMD";
    expr = optionsDoc.render [
      (opt "cairn.x" {
        description = "Needs {option}`cairn.y` and {file}`/etc/x`.";
        default = md "as {option}`cairn.y`";
      })
    ];
    expected = header + ''

      ## `cairn.x`

      Needs `cairn.y` and `/etc/x`.

      *Type:* boolean

      *Default:*

      as `cairn.y`
    '';
  }
  {
    name = "optionsDoc.render: a backtick inside a code span gets a longer fence";
    expr = optionsDoc.render [
      (opt "cairn.x" {
        type = "string";
        default = lit ''"a`b"'';
        example = lit "`x";
      })
    ];
    expected = header + ''

      ## `cairn.x`

      About cairn.x.

      *Type:* string

      *Default:* ``"a`b"``

      *Example:* `` `x ``
    '';
  }
  {
    name = "optionsDoc.render: refuses an option without a description";
    expr = optionsDoc.render [ (opt "cairn.x" { description = null; }) ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: no description";
  }
  {
    name = "optionsDoc.render: refuses a default that is not a literal";
    expr = optionsDoc.render [ (opt "cairn.x" { default = false; }) ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: default: expected a literalExpression or literalMD ({ _type; text; }), got a bool";
  }
  {
    name = "optionsDoc.render: refuses an example of another _type";
    expr = optionsDoc.render [
      (opt "cairn.x" {
        example = {
          _type = "literalDocBook";
          text = "<literal>x</literal>";
        };
      })
    ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: example: _type 'literalDocBook' is neither literalExpression nor literalMD";
  }
  {
    name = "optionsDoc.render: refuses a store path in the document";
    expr = optionsDoc.render [
      (opt "cairn.x" {
        type = "package";
        default = lit "${builtins.storeDir}/0123456789abcdfghijklmnpqrsvwxyz-cairn-1.0";
      })
    ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: its documentation names a store path";
  }
  {
    name = "optionsDoc.render: an elided store path in an example is fine";
    expr = headings [ (opt "cairn.x" { example = lit ''"/nix/store/...-nixos-system/init"''; }) ];
    expected = [ "## `cairn.x`" ];
  }
  {
    name = "optionsDoc.render: refuses an option listed twice";
    expr = optionsDoc.render [
      (opt "cairn.x" { })
      (opt "cairn.x" { })
    ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: listed twice";
  }
  {
    name = "optionsDoc.render: refuses a non-bool readOnly";
    expr = optionsDoc.render [ (opt "cairn.x" { readOnly = "yes"; }) ];
    throws = "cairn.optionsDoc.render: option `cairn.x`: readOnly: expected a bool, got a string";
  }
  {
    name = "optionsDoc.render: refuses an entry without a name";
    expr = optionsDoc.render [ { description = "x"; } ];
    throws = "cairn.optionsDoc.render: expected the entries of lib.optionAttrSetToDocList";
  }
  {
    name = "optionsDoc.render: refuses the options set instead of the doc list";
    expr = optionsDoc.render { cairn = { }; };
    throws = "cairn.optionsDoc.render: expected the list lib.optionAttrSetToDocList returns, got a set";
  }
]
