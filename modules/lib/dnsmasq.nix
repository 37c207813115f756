# dnsmasq.conf for the PXE server: proxy-DHCP beside the LAN's router, TFTP for iPXE, HTTP after.
let
  inherit (builtins)
    all
    elemAt
    fromJSON
    isString
    match
    typeOf
    ;

  show = v: if isString v then "'${v}'" else "a ${typeOf v}";

  # A string matching `re`, or a throw naming what it should have been.
  expect =
    what: re: v:
    if isString v && match re v != null then v else throw "cairn.pxe: ${what}, got ${show v}";

  octet = "(0|[1-9][0-9]{0,2})";

  ipv4 =
    what: v:
    let
      m = if isString v then match "${octet}\\.${octet}\\.${octet}\\.${octet}" v else null;
    in
    if m != null && all (i: fromJSON (elemAt m i) <= 255) [ 0 1 2 3 ] then
      v
    else
      throw "cairn.pxe: ${what} must be an IPv4 address like 192.168.1.0, got ${show v}";

  fileName = what: expect "${what} must be a file name in tftpRoot (no spaces or commas)" "[A-Za-z0-9._/-]+";

  # The arguments, checked: { iface; net; root; entry; bios; efi; next; }.
  checkArgs =
    {
      interface,
      subnet,
      tftpRoot,
      entryUrl,
      ipxeBios ? "undionly.kpxe",
      ipxeEfi ? "ipxe.efi",
      # iPXE ignores a proxy offer whose next-server is 0.0.0.0 even when it chains over
      # HTTP; any non-zero address works (iPXE's proxyDHCP appnote uses 0.0.0.1).
      nextServer ? "0.0.0.1",
    }:
    {
      iface = expect "interface must be a network interface name" "[A-Za-z0-9_.:@-]+" interface;
      net = ipv4 "subnet" subnet;
      root = expect "tftpRoot must be an absolute path without spaces or commas" "/[^[:space:],]*" tftpRoot;
      entry = expect "entryUrl must be an http:// or https:// URL without spaces or commas" "https?://[^[:space:],]+" entryUrl;
      bios = fileName "ipxeBios" ipxeBios;
      efi = fileName "ipxeEfi" ipxeEfi;
      next =
        if ipv4 "nextServer" nextServer == "0.0.0.0" then
          throw "cairn.pxe: nextServer must be a non-zero IPv4 address: iPXE ignores a proxy offer without one"
        else
          nextServer;
    };

  # dnsmasq.conf text, commented.
  proxyConfig =
    args:
    let
      a = checkArgs args;
    in
    ''
      # Cairn PXE: proxy-DHCP only. The LAN's router keeps leasing addresses; this server adds
      # the boot information, serves the iPXE binaries over TFTP, and hands iPXE the entry URL.

      # No DNS service.
      port=0
      interface=${a.iface}
      bind-interfaces
      # proxy: answer PXE clients beside the router's offer; never lease an address.
      dhcp-range=${a.net},proxy
      log-dhcp

      enable-tftp
      tftp-root=${a.root}

      # iPXE announces itself with user class "iPXE" and its own option 175.
      dhcp-userclass=set:ipxe,iPXE
      dhcp-match=set:ipxe,175

      # Firmware PXE ROMs (not iPXE yet) load iPXE over TFTP, by client architecture. In proxy
      # mode dnsmasq answers PXE clients only when a pxe-service is set; a basename with a
      # suffix is sent as is (no ".0" appended).
      pxe-service=tag:!ipxe,x86PC,"Cairn iPXE (BIOS)",${a.bios}
      pxe-service=tag:!ipxe,x86-64_EFI,"Cairn iPXE (UEFI)",${a.efi}
      pxe-service=tag:!ipxe,BC_EFI,"Cairn iPXE (UEFI)",${a.efi}

      # iPXE gets no boot menu, only the entry script's URL as its boot file.
      dhcp-boot=tag:ipxe,${a.entry},,${a.next}
    '';

  # The same directives for NixOS's services.dnsmasq.settings (true: a bare flag; a list: one
  # line per element). Its file is ordered by key, which these directives do not depend on.
  proxySettings =
    args:
    let
      a = checkArgs args;
    in
    {
      port = 0;
      interface = a.iface;
      bind-interfaces = true;
      dhcp-range = [ "${a.net},proxy" ];
      log-dhcp = true;
      enable-tftp = true;
      tftp-root = a.root;
      dhcp-userclass = [ "set:ipxe,iPXE" ];
      dhcp-match = [ "set:ipxe,175" ];
      pxe-service = [
        ''tag:!ipxe,x86PC,"Cairn iPXE (BIOS)",${a.bios}''
        ''tag:!ipxe,x86-64_EFI,"Cairn iPXE (UEFI)",${a.efi}''
        ''tag:!ipxe,BC_EFI,"Cairn iPXE (UEFI)",${a.efi}''
      ];
      dhcp-boot = [ "tag:ipxe,${a.entry},,${a.next}" ];
    };
in
{
  inherit proxyConfig proxySettings;
}
