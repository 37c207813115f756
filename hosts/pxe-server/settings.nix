# Supervisor settings of the PXE boot server (runs no models); services.cairn.settings: the
# shared base (../settings-base.nix) and what differs here.
let
  base = import ../settings-base.nix;
in
base
// {
  probe = base.probe // {
    # No inference load to follow here; a slower period is enough.
    interval = 10.0;
  };
}
