# Cairn's pure-Nix helpers (builtins only): CPU lists, MAC maps, iPXE scripts, dnsmasq config.
{
  cpus = import ./cpus.nix;
  mac = import ./mac.nix;
  ipxe = import ./ipxe.nix;
  dnsmasq = import ./dnsmasq.nix;
}
