# Supervisor settings of a legacy node (Core 2 Duo, 2 cores, netbooted); services.cairn.settings:
# the shared base (../settings-base.nix) and what differs here.
let
  base = import ../settings-base.nix;
in
base
// {
  probe = base.probe // {
    # The default period: sampling costs little, but this node has one housekeeping core.
    interval = 5.0;
  };
}
