# Cairn's pure-Nix helpers (builtins only): CPU lists, MAC maps, iPXE scripts, dnsmasq config,
# the options document, the supervisor's polkit rule, systemd drop-in files as settings, the
# LAN's and hosts' network values, SSH reachability.
{
  cpus = import ./cpus.nix;
  mac = import ./mac.nix;
  ipxe = import ./ipxe.nix;
  dnsmasq = import ./dnsmasq.nix;
  optionsDoc = import ./options-doc.nix;
  polkit = import ./polkit.nix;
  unitFile = import ./unit-file.nix;
  network = import ./network.nix;
  ssh = import ./ssh.nix;
}
