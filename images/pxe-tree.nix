# The PXE server's HTTP tree: entry.ipxe, boot/<mac>.ipxe + boot/default.ipxe, and one netboot tree per class.
{
  lib,
  linkFarm,
  writeText,
  # Where clients fetch this tree, e.g. "http://192.168.1.2"; baked into every script.
  baseUrl,
  # { <hostname> = { mac; class; }; }
  hosts,
  # { <class> = { tree; kernelParams; init; }; } (a system's config.system.build.cairnNetboot)
  classes,
  defaultClass,
}:
let
  cairnLib = import ../modules/lib;

  bootFiles = cairnLib.ipxe.bootFiles {
    inherit baseUrl hosts defaultClass;
    classes = lib.mapAttrs (_: c: { inherit (c) kernelParams init; }) classes;
  };

  # Store names cannot hold ':' (boot/52:54:00:12:34:56.ipxe); the link name inside the tree can.
  storeName = file: "cairn-boot-" + lib.replaceStrings [ ":" ] [ "-" ] file;
in
linkFarm "cairn-pxe-tree" (
  [
    {
      name = "entry.ipxe";
      path = writeText "cairn-entry.ipxe" (cairnLib.ipxe.entryScript { inherit baseUrl; });
    }
  ]
  ++ lib.mapAttrsToList (file: text: {
    name = "boot/${file}";
    path = writeText (storeName file) text;
  }) bootFiles
  ++ lib.mapAttrsToList (class: c: {
    name = class;
    path = c.tree;
  }) classes
)
