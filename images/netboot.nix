# A host class as a netboot tree (kernel, initrd with the squashed store, iPXE script), on nixpkgs' netboot module.
{
  config,
  modulesPath,
  pkgs,
  ...
}:
let
  build = config.system.build;
in
{
  # Root is a tmpfs and /nix/store a squashfs in the initrd: the node keeps no state across
  # boots, and anything baked into the image is readable by every machine on the LAN.
  imports = [ (modulesPath + "/installer/netboot/netboot.nix") ];

  system.build = {
    # bzImage and initrd are the names the iPXE scripts fetch (modules/lib/ipxe.nix);
    # netboot.ipxe is nixpkgs' own script, for booting the tree without the PXE server.
    netbootTree = pkgs.linkFarm "cairn-netboot-tree" [
      {
        name = "bzImage";
        path = "${build.kernel}/${config.system.boot.loader.kernelFile}";
      }
      {
        name = "initrd";
        path = "${build.netbootRamdisk}/initrd";
      }
      {
        name = "netboot.ipxe";
        path = "${build.netbootIpxeScript}/netboot.ipxe";
      }
      {
        name = "kernel-params";
        path = "${build.toplevel}/kernel-params";
      }
    ];

    # What the PXE server needs to write this class's boot scripts (cairn.pxe.classes.<name>).
    cairnNetboot = {
      tree = build.netbootTree;
      inherit (config.boot) kernelParams;
      init = "${build.toplevel}/init";
    };
  };
}
