# The LAN the shipped hosts assume; adjust to yours. The PXE server has a fixed address (every
# iPXE script names it), so every other node joins the gossip through it.
{
  pxeServer = "192.168.1.2";
  gateway = "192.168.1.1";
}
