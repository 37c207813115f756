# The LAN and each host's network settings, checked without nixpkgs: IPv4 addresses, the LAN's
# values (hosts/lan.nix), the shapes networkd needs, NIC names, and which interfaces wake on LAN.
let
  inherit (builtins)
    all
    any
    attrNames
    filter
    foldl'
    fromJSON
    genList
    isAttrs
    isInt
    isList
    isString
    match
    toJSON
    typeOf
    ;

  show = v: if isString v then "'${v}'" else "a ${typeOf v} (${toJSON v})";

  # "192.168.1.2" -> [ 192 168 1 2 ], or null. No leading zeros: "010" means 8 to some tools.
  octet = "(0|[1-9][0-9]{0,2})";
  parseIPv4 =
    s:
    let
      m = if isString s then match "${octet}\\.${octet}\\.${octet}\\.${octet}" s else null;
      parts = if m == null then [ ] else map fromJSON m;
    in
    if m != null && all (n: n <= 255) parts then parts else null;

  isIPv4 = s: parseIPv4 s != null;

  # An address as one integer, for prefix arithmetic.
  toInt = parts: foldl' (acc: n: acc * 256 + n) 0 parts;

  pow2 = n: foldl' (acc: _: acc * 2) 1 (genList (x: x) n);

  # The network address of `address` under `prefixLength`, as an integer.
  networkOf = address: prefixLength: let size = pow2 (32 - prefixLength); in (toInt address / size) * size;

  # Each problem of the LAN's values, as "hosts/lan.nix: <key>: ..." messages; [ ] when sound.
  lanProblems =
    lan:
    let
      where = "hosts/lan.nix";
      keys = [
        "subnet"
        "prefixLength"
        "gateway"
        "pxeServer"
        "nameservers"
      ];
      missing = filter (k: !(isAttrs lan && lan ? ${k})) keys;
      prefixOk = isInt lan.prefixLength && lan.prefixLength >= 8 && lan.prefixLength <= 30;
      # Addresses are placed in the subnet only once the subnet itself is sound.
      subnetOk =
        prefixOk
        && isIPv4 lan.subnet
        && networkOf (parseIPv4 lan.subnet) lan.prefixLength == toInt (parseIPv4 lan.subnet);
      addressProblem =
        key:
        if !isIPv4 lan.${key} then
          [ "${where}: ${key}: ${show lan.${key}} is not an IPv4 address like 192.168.1.2" ]
        else if subnetOk && networkOf (parseIPv4 lan.${key}) lan.prefixLength != toInt (parseIPv4 lan.subnet) then
          [ "${where}: ${key}: ${lan.${key}} is outside ${lan.subnet}/${toString lan.prefixLength}" ]
        else
          [ ];
      hostPart =
        key:
        let
          a = toInt (parseIPv4 lan.${key});
          size = pow2 (32 - lan.prefixLength);
          net = networkOf (parseIPv4 lan.${key}) lan.prefixLength;
        in
        if subnetOk && isIPv4 lan.${key} && (a == net || a == net + size - 1) then
          [ "${where}: ${key}: ${lan.${key}} is the network or the broadcast address of ${lan.subnet}/${toString lan.prefixLength}" ]
        else
          [ ];
    in
    if !isAttrs lan then
      [ "${where}: expected an attribute set { subnet; prefixLength; gateway; pxeServer; nameservers; }, got ${show lan}" ]
    else if missing != [ ] then
      map (k: "${where}: ${k}: missing (it needs subnet, prefixLength, gateway, pxeServer and nameservers)") missing
    else
      (
        if !isIPv4 lan.subnet then
          [ "${where}: subnet: ${show lan.subnet} is not an IPv4 network address like 192.168.1.0" ]
        else if prefixOk && networkOf (parseIPv4 lan.subnet) lan.prefixLength != toInt (parseIPv4 lan.subnet) then
          [ "${where}: subnet: ${lan.subnet} has host bits set under /${toString lan.prefixLength}; the network address is expected" ]
        else
          [ ]
      )
      ++ (
        if prefixOk then
          [ ]
        else
          [ "${where}: prefixLength: ${show lan.prefixLength} is not a prefix length from 8 to 30 (24 for a 255.255.255.0 netmask)" ]
      )
      ++ addressProblem "gateway"
      ++ addressProblem "pxeServer"
      ++ hostPart "gateway"
      ++ hostPart "pxeServer"
      ++ (
        if isString lan.gateway && lan.gateway == lan.pxeServer then
          [ "${where}: pxeServer: ${lan.pxeServer} is the gateway's address; the PXE server needs an address of its own" ]
        else
          [ ]
      )
      ++ (
        if !isList lan.nameservers then
          [ "${where}: nameservers: expected a list of addresses like [ \"192.168.1.1\" ], got ${show lan.nameservers}" ]
        else
          map (n: "${where}: nameservers: ${show n} is not an IPv4 address") (filter (n: !isIPv4 n) lan.nameservers)
      );

  # What nixpkgs' networkd backend refuses or mistypes in a host's `networking` settings
  # (nixos/modules/tasks/network-interfaces-systemd.nix asserts `defaultGateway.interface` under
  # networkd; `nameservers` is a list of strings). `host` names the host in each message.
  networkdProblems =
    {
      host,
      useNetworkd,
      defaultGateway ? null,
      defaultGateway6 ? null,
      nameservers ? [ ],
      interfaces ? { },
    }:
    let
      gatewayProblems =
        opt: gw:
        if gw == null then
          [ ]
        else if isString gw then
          if useNetworkd then
            [ "${host}: networking.${opt}: a bare address (${show gw}) has no interface, and under networkd (which cairn.appliance turns on) nixpkgs requires one: write { address = ${toJSON gw}; interface = \"eth0\"; }" ]
          else
            [ ]
        else if !isAttrs gw || !(gw ? address) then
          [ "${host}: networking.${opt}: expected an address or { address; interface; }, got ${show gw}" ]
        else if useNetworkd && (gw.interface or null) == null then
          [ "${host}: networking.${opt}.interface: not set, and under networkd (which cairn.appliance turns on) nixpkgs requires it" ]
        else if (gw.interface or null) != null && interfaces != { } && !(interfaces ? ${gw.interface}) then
          [ "${host}: networking.${opt}.interface: '${gw.interface}' is not among networking.interfaces (${toString (attrNames interfaces)})" ]
        else
          [ ];
    in
    gatewayProblems "defaultGateway" defaultGateway
    ++ gatewayProblems "defaultGateway6" defaultGateway6
    ++ (
      if !isList nameservers then
        [ "${host}: networking.nameservers: expected a list of addresses, got ${show nameservers}" ]
      else
        map (n: "${host}: networking.nameservers: ${show n} is not an address") (
          filter (n: !isString n || n == "") nameservers
        )
    );

  # A NIC name against the interface naming in force. With predictable names off (`net.ifnames=0`
  # on the kernel command line) the kernel's eth0, eth1, ... are the only names; with them on,
  # udev renames a PCI NIC (enp3s0 and the like), so an ethN name matches nothing: the fixed
  # address never comes up and dnsmasq (bind-interfaces) does not start. `where` names the option.
  nicNameProblems =
    {
      where,
      name,
      predictable,
    }:
    let
      kernelName = match "eth[0-9]+" name != null;
    in
    if !isString name || match "[A-Za-z0-9_.-]{1,15}" name == null then
      [ "${where}: ${show name} is not a network interface name (1-15 letters, digits, '-', '_' or '.')" ]
    else if predictable && kernelName then
      [ "${where}: '${name}' is a kernel name, but networking.usePredictableInterfaceNames is on, so udev renames the NIC (enp3s0 or the like): use the name `ip -br link` shows on the machine, or turn predictable names off" ]
    else if !predictable && !kernelName then
      [ "${where}: '${name}' is not a kernel name, but networking.usePredictableInterfaceNames is off (net.ifnames=0), so the NICs are eth0, eth1, ...: use \"eth0\" on a machine with one NIC" ]
    else
      [ ];

  # The names of what turns Wake-on-LAN on: `networking.interfaces.<n>.wakeOnLan.enable`, or a
  # `.link` file (`systemd.network.links.<n>.linkConfig.WakeOnLan`) that is not "off"/"no".
  wakeOnLan =
    {
      interfaces ? { },
      links ? { },
    }:
    let
      wolOf = l: (l.linkConfig or { }).WakeOnLan or null;
      on =
        v:
        v != null
        && !(any (off: v == off) [
          "off"
          "no"
          false
          ""
        ]);
    in
    map (n: "networking.interfaces.${n}") (
      filter (n: (interfaces.${n}.wakeOnLan or { }).enable or false) (attrNames interfaces)
    )
    ++ map (n: "systemd.network.links.${n}") (
      filter (n: (links.${n}.enable or true) && on (wolOf links.${n})) (attrNames links)
    );
in
{
  inherit
    parseIPv4
    lanProblems
    networkdProblems
    nicNameProblems
    wakeOnLan
    ;
}
