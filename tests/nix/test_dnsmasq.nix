# Cases for modules/lib/dnsmasq.nix: proxyConfig and proxySettings, refusals included.
let
  inherit (import ../../modules/lib) dnsmasq;
  args = {
    interface = "enp3s0";
    subnet = "192.168.1.0";
    tftpRoot = "/srv/cairn/tftp";
    entryUrl = "http://192.168.1.2:8080/entry.ipxe";
  };
  # The directives alone: comments and blank lines dropped.
  directives =
    text:
    builtins.filter (l: builtins.isString l && l != "" && builtins.substring 0 1 l != "#") (
      builtins.split "\n" text
    );
  # NixOS's services.dnsmasq.settings rendering: true is a bare flag, a list one line each.
  render =
    settings:
    builtins.concatLists (
      map (
        k:
        let
          v = settings.${k};
        in
        if v == true then
          [ k ]
        else if builtins.isList v then
          map (x: "${k}=${x}") v
        else
          [ "${k}=${toString v}" ]
      ) (builtins.attrNames settings)
    );
  sorted = builtins.sort builtins.lessThan;
in
[
  {
    name = "dnsmasq.proxyConfig: proxy-DHCP, TFTP for the PXE ROMs, the entry URL for iPXE";
    expr = directives (dnsmasq.proxyConfig args);
    expected = [
      "port=0"
      "interface=enp3s0"
      "bind-interfaces"
      "dhcp-range=192.168.1.0,proxy"
      "log-dhcp"
      "enable-tftp"
      "tftp-root=/srv/cairn/tftp"
      "dhcp-userclass=set:ipxe,iPXE"
      "dhcp-match=set:ipxe,175"
      ''pxe-service=tag:!ipxe,x86PC,"Cairn iPXE (BIOS)",undionly.kpxe''
      ''pxe-service=tag:!ipxe,x86-64_EFI,"Cairn iPXE (UEFI)",ipxe.efi''
      ''pxe-service=tag:!ipxe,BC_EFI,"Cairn iPXE (UEFI)",ipxe.efi''
      "dhcp-boot=tag:ipxe,http://192.168.1.2:8080/entry.ipxe,,0.0.0.1"
    ];
  }
  {
    name = "dnsmasq.proxyConfig: other iPXE binaries and next-server";
    expr = builtins.filter (l: builtins.match "(pxe-service|dhcp-boot)=.*" l != null) (
      directives (
        dnsmasq.proxyConfig (
          args
          // {
            ipxeBios = "ipxe/undionly.kpxe";
            ipxeEfi = "ipxe/snponly.efi";
            nextServer = "192.168.1.2";
          }
        )
      )
    );
    expected = [
      ''pxe-service=tag:!ipxe,x86PC,"Cairn iPXE (BIOS)",ipxe/undionly.kpxe''
      ''pxe-service=tag:!ipxe,x86-64_EFI,"Cairn iPXE (UEFI)",ipxe/snponly.efi''
      ''pxe-service=tag:!ipxe,BC_EFI,"Cairn iPXE (UEFI)",ipxe/snponly.efi''
      "dhcp-boot=tag:ipxe,http://192.168.1.2:8080/entry.ipxe,,192.168.1.2"
    ];
  }
  {
    name = "dnsmasq.proxyConfig: refuses a subnet with a mask";
    expr = dnsmasq.proxyConfig (args // { subnet = "192.168.1.0/24"; });
    throws = "cairn.pxe: subnet must be an IPv4 address like 192.168.1.0, got '192.168.1.0/24'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses an octet above 255";
    expr = dnsmasq.proxyConfig (args // { subnet = "192.168.256.0"; });
    throws = "cairn.pxe: subnet must be an IPv4 address like 192.168.1.0, got '192.168.256.0'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses a relative tftpRoot";
    expr = dnsmasq.proxyConfig (args // { tftpRoot = "srv/tftp"; });
    throws = "cairn.pxe: tftpRoot must be an absolute path without spaces or commas, got 'srv/tftp'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses an entry URL that is not HTTP";
    expr = dnsmasq.proxyConfig (args // { entryUrl = "tftp://192.168.1.2/entry.ipxe"; });
    throws = "cairn.pxe: entryUrl must be an http:// or https:// URL without spaces or commas, got 'tftp://192.168.1.2/entry.ipxe'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses an interface name with a space";
    expr = dnsmasq.proxyConfig (args // { interface = "eth 0"; });
    throws = "cairn.pxe: interface must be a network interface name, got 'eth 0'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses a binary name with a comma";
    expr = dnsmasq.proxyConfig (args // { ipxeEfi = "ipxe.efi,x"; });
    throws = "cairn.pxe: ipxeEfi must be a file name in tftpRoot (no spaces or commas), got 'ipxe.efi,x'";
  }
  {
    name = "dnsmasq.proxyConfig: refuses a zero next-server";
    expr = dnsmasq.proxyConfig (args // { nextServer = "0.0.0.0"; });
    throws = "cairn.pxe: nextServer must be a non-zero IPv4 address";
  }

  {
    name = "dnsmasq.proxySettings: the same directives as proxyConfig, as NixOS settings";
    expr = sorted (render (dnsmasq.proxySettings (args // { nextServer = "192.168.1.2"; })));
    expected = sorted (directives (dnsmasq.proxyConfig (args // { nextServer = "192.168.1.2"; })));
  }
  {
    name = "dnsmasq.proxySettings: flags and repeated keys";
    expr = builtins.removeAttrs (dnsmasq.proxySettings args) [ "pxe-service" ];
    expected = {
      port = 0;
      interface = "enp3s0";
      bind-interfaces = true;
      dhcp-range = [ "192.168.1.0,proxy" ];
      log-dhcp = true;
      enable-tftp = true;
      tftp-root = "/srv/cairn/tftp";
      dhcp-userclass = [ "set:ipxe,iPXE" ];
      dhcp-match = [ "set:ipxe,175" ];
      dhcp-boot = [ "tag:ipxe,http://192.168.1.2:8080/entry.ipxe,,0.0.0.1" ];
    };
  }
  {
    name = "dnsmasq.proxySettings: refuses what proxyConfig refuses";
    expr = dnsmasq.proxySettings (args // { subnet = "192.168.1"; });
    throws = "cairn.pxe: subnet must be an IPv4 address like 192.168.1.0, got '192.168.1'";
  }
]
