# iPXE scripts: the entry script every PXE client runs first, and one boot script per host.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elemAt
    filter
    isList
    isString
    listToAttrs
    match
    typeOf
    ;

  mac = import ./mac.nix;

  show = v: if isString v then "'${v}'" else "a ${typeOf v}";

  lines = ls: concatStringsSep "\n" ls + "\n";

  # "http://host:port/path/" -> "http://host:port/path"; anything else but http(s) is refused.
  base =
    url:
    let
      m = if isString url then match "(https?://[^[:space:]]*[^[:space:]/])/*" url else null;
    in
    if m == null then
      throw "cairn.pxe: baseUrl ${show url} is not an http:// or https:// URL"
    else
      elemAt m 0;

  checkClass =
    class:
    if isString class && match "[A-Za-z0-9][A-Za-z0-9._-]*" class != null then
      class
    else
      throw "cairn.pxe: class ${show class} is not a plain name (letters, digits, '.', '_' or '-'); it is a directory under baseUrl";

  # iPXE splits the kernel line on spaces and runs one command per line.
  checkParams =
    params:
    let
      bad = filter (p: !(isString p && match "[^[:space:]]+" p != null)) params;
    in
    if !isList params then
      throw "cairn.pxe: kernelParams must be a list of strings, got ${show params}"
    else if bad != [ ] then
      throw "cairn.pxe: kernel parameter ${show (builtins.head bad)} is empty or contains whitespace"
    else
      params;

  # The first script a PXE client runs (served over TFTP or chained by DHCP): fetch this
  # machine's own script by MAC, else the default class. ${net0/mac} expands to
  # 52:54:00:12:34:56; iPXE percent-encodes the colons and the HTTP server decodes them.
  entryScript =
    { baseUrl }:
    let
      b = base baseUrl;
    in
    lines [
      "#!ipxe"
      "# Cairn netboot entry: this machine's own boot script (by MAC), else the default class."
      "imgfetch --name cairn-host ${b}/boot/\${net0/mac}.ipxe || goto default"
      "chain cairn-host || goto failed"
      ":default"
      "echo Cairn: no boot script for \${net0/mac}; booting the default class"
      "chain ${b}/boot/default.ipxe || goto failed"
      ":failed"
      "echo Cairn: netboot from ${b} failed; back to the firmware boot order"
      "exit 1"
    ];

  # Mirrors nixpkgs' netboot.ipxe: `kernel bzImage init=<toplevel>/init initrd=initrd <params>`;
  # initrd=initrd names the image loaded by the `initrd` line (needed by EFI-stub kernels).
  hostScript =
    {
      baseUrl,
      class,
      hostname ? null,
      kernelParams ? [ ],
      init ? null,
    }:
    let
      b = base baseUrl;
      c = checkClass class;
      initArg =
        if init == null then
          [ ]
        else if isString init && match "/[^[:space:]]*" init != null then
          [ "init=${init}" ]
        else
          throw "cairn.pxe: init ${show init} is not an absolute path";
      hostArg =
        if hostname == null then
          [ ]
        else if mac.isDnsLabel hostname then
          [ "hostname=${hostname}" ]
        else
          throw "cairn.pxe: hostname ${show hostname} is not a valid DNS label";
      kernelLine = concatStringsSep " " (
        [ "kernel ${b}/${c}/bzImage" ] ++ initArg ++ [ "initrd=initrd" ] ++ hostArg ++ checkParams kernelParams
      );
    in
    lines [
      "#!ipxe"
      "# Cairn ${c} boot${if hostname == null then " (default for unlisted machines)" else " of ${hostname}"}"
      kernelLine
      "initrd ${b}/${c}/initrd"
      "boot"
    ];

  # Every file under boot/: one "<mac>.ipxe" per listed host plus "default.ipxe".
  bootFiles =
    {
      baseUrl,
      hosts,
      classes,
      defaultClass,
    }:
    let
      known = concatStringsSep ", " (attrNames classes);
      classAttrs =
        where: name:
        if isString name && classes ? ${name} then
          classes.${name}
        else
          throw "${where}: unknown class ${show name} (known: ${known})";
      script =
        where: class: hostname:
        let
          c = classAttrs where class;
        in
        hostScript {
          inherit baseUrl class hostname;
          kernelParams = c.kernelParams or [ ];
          init = c.init or null;
        };
      byMac = mac.hostMap hosts;
      perHost = map (m: {
        name = "${m}.ipxe";
        value = script "cairn.pxe.hosts.${byMac.${m}.hostname}.class" byMac.${m}.class byMac.${m}.hostname;
      }) (attrNames byMac);
    in
    listToAttrs perHost // { "default.ipxe" = script "cairn.pxe.defaultClass" defaultClass null; };
in
{
  inherit entryScript hostScript bootFiles;
}
