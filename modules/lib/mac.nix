# MAC addresses: one spelling for every MAC, and the MAC -> { hostname, class } map for netboot.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    groupBy
    head
    isAttrs
    isString
    length
    listToAttrs
    match
    replaceStrings
    typeOf
    ;

  show = v: if isString v then "'${v}'" else "a ${typeOf v}";

  lower = replaceStrings [ "A" "B" "C" "D" "E" "F" ] [ "a" "b" "c" "d" "e" "f" ];

  byte = "[0-9A-Fa-f]{2}";

  # `where` prefixes the message: the option path of the offending value.
  normalizeAs =
    where: mac:
    if isString mac && match "${byte}(:${byte}){5}" mac != null then
      lower mac
    else if isString mac && match "${byte}(-${byte}){5}" mac != null then
      lower (replaceStrings [ "-" ] [ ":" ] mac)
    else
      throw "${where}: invalid MAC address ${show mac}; expected six hex pairs separated by ':' or '-', like 52:54:00:12:34:56";

  normalize = normalizeAs "cairn.pxe.hosts";

  # RFC 1123 host name label: what hostname= on the kernel command line may carry.
  isDnsLabel = s: isString s && match "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?" s != null;

  # One host of the input attrset, checked: { name; mac (normalized); class; }.
  hostEntry =
    name: host:
    if !isDnsLabel name then
      throw "cairn.pxe.hosts: hostname '${name}' is not a valid DNS label (1-63 letters, digits or '-', not starting or ending with '-')"
    else if !(isAttrs host && host ? mac && host ? class) then
      throw "cairn.pxe.hosts.${name}: expected { mac = \"52:54:00:12:34:56\"; class = \"legacy-node\"; }"
    else if !isString host.class then
      throw "cairn.pxe.hosts.${name}.class: expected a host class name, got ${show host.class}"
    else
      {
        inherit name;
        inherit (host) class;
        mac = normalizeAs "cairn.pxe.hosts.${name}.mac" host.mac;
      };

  hostMap =
    hosts:
    let
      entries = map (name: hostEntry name hosts.${name}) (attrNames hosts);
      byMac = groupBy (e: e.mac) entries;
      shared = filter (m: length byMac.${m} > 1) (attrNames byMac);
      names = m: concatStringsSep " and " (map (e: "'${e.name}'") byMac.${m});
    in
    if !isAttrs hosts then
      throw "cairn.pxe.hosts: expected an attrset of hostname = { mac; class; }, got ${show hosts}"
    else if shared != [ ] then
      throw "cairn.pxe.hosts: MAC address ${head shared} is given to more than one host: ${names (head shared)}"
    else
      listToAttrs (
        map (e: {
          name = e.mac;
          value = {
            hostname = e.name;
            inherit (e) class;
          };
        }) entries
      );
in
{
  inherit normalize hostMap isDnsLabel;
}
