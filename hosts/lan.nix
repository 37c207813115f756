# The LAN every host assumes, in one place; adjust it to yours (docs/first-deployment.md, step 2).
# Checked when the PXE server is built (modules/lib/network.nix, lanProblems) and by make test.
{
  # The router's network, as on its DHCP settings page: 192.168.1.0 with prefix 24 is
  # 192.168.1.0-192.168.1.255 (netmask 255.255.255.0).
  subnet = "192.168.1.0";
  prefixLength = 24;
  # The router: the PXE server's default route and DNS resolver (the other nodes learn theirs
  # from the router's DHCP).
  gateway = "192.168.1.1";
  nameservers = [ "192.168.1.1" ];
  # The PXE server's fixed address: inside the subnet but outside the router's DHCP range, so the
  # router never leases it to another machine. Every iPXE script names it, and every other node
  # joins the gossip through it.
  pxeServer = "192.168.1.2";
}
