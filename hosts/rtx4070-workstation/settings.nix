# Supervisor settings of the RTX 4070 workstation (20 cores, installed); services.cairn.settings:
# the shared base (../settings-base.nix) and what differs here.
let
  base = import ../settings-base.nix;
in
base
// {
  probe = base.probe // {
    # Sampled more often than the default: GPU load and temperature move fast under inference,
    # and this host has spare housekeeping cores.
    interval = 2.0;
  };
}
