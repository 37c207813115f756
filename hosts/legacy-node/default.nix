# Legacy node class: Core 2 Duo, 2 cores, 8 GB, no AVX; netbooted, stateless, named by the kernel command line.
{ lib, ... }:
{
  imports = [ ../../images/netboot.nix ];

  # One image for every legacy machine: the PXE server's per-MAC script passes hostname=.
  networking.hostName = "";
  cairn.appliance = {
    enable = true;
    hostnameFromKernelCmdline = true;
    # /var is RAM here.
    journalMaxUse = lib.mkDefault "64M";
  };

  # Core 0 keeps the kernel, interrupts and the supervisor; core 1 runs inference.
  cairn.tuning = {
    enable = true;
    cpuCount = 2;
    isolatedCores = "1";
  };

  # The default package: llama-cpp-python portable (SSE2 baseline, no AVX).
  services.cairn = {
    enable = true;
    settings = import ./settings.nix;
    # settings.nix listens on the LAN so peers can route requests here.
    openFirewall = true;
  };

  system.stateVersion = "26.05";
}
