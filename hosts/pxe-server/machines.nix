# The machines the PXE server knows, by hostname: boot NIC MAC and host class (cairn.pxe.hosts).
# Unlisted machines boot the default class (legacy-node) without a hostname.
{
  # Placeholders (locally administered MACs): replace with the labels on your machines' NICs.
  legacy-01 = {
    mac = "02:00:00:00:00:01";
    class = "legacy-node";
  };
  legacy-02 = {
    mac = "02:00:00:00:00:02";
    class = "legacy-node";
  };
  legacy-03 = {
    mac = "02:00:00:00:00:03";
    class = "legacy-node";
  };
}
