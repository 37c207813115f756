# A test operator's public SSH key: the appliance refuses to build a host nobody could log in to
# (password logins are off). The private half was thrown away; the driver uses its backdoor.
{
  cairn.appliance.sshKeys = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAx2H8RX1wHTPpBcYO5xmqbmavePZhGVwEVC8k/MPJU8 cairn-vm-test (no private key kept)"
  ];
}
