# RTX 4070 workstation class: 20 cores, cores 2-5,12-15 isolated for inference, CUDA llama build.
{ lib, pkgs, ... }:
{
  networking.hostName = lib.mkDefault "rtx4070";
  nixpkgs.config = import ./nixpkgs-config.nix;

  cairn.appliance = {
    enable = true;
    sshKeys = import ../ssh-keys.nix;
    # It may suspend when idle (services.cairn.settings.power): peers wake it with a magic packet.
    wakeOnLan.enable = true;
  };

  # Logical CPUs 2-5 and 12-15 are isolated for inference; 0-1, 6-11 and 16-19 keep the kernel,
  # interrupts, the supervisor and the GPU driver threads. Which logical CPUs share a physical
  # core depends on the CPU and firmware: check with `lscpu -e` (the CORE column) on the machine,
  # and isolate hyperthread siblings together so housekeeping work never shares a physical core
  # with an inference thread.
  cairn.tuning = {
    enable = true;
    cpuCount = 20;
    isolatedCores = "2-5,12-15";
  };

  # Loads the NVIDIA driver; no X server is enabled by this.
  services.xserver.videoDrivers = [ "nvidia" ];
  hardware.nvidia = {
    # Ada Lovelace is supported by, and recommended with, the open kernel modules.
    open = true;
    nvidiaSettings = false; # a GUI tool; this host is headless
    nvidiaPersistenced = true; # keep the GPU initialized with no display attached
  };
  # /run/opengl-driver/lib: where CUDA programs find libcuda.so.
  hardware.graphics.enable = true;

  services.cairn = {
    enable = true;
    package = pkgs.callPackage ../../modules/packages/cairn.nix { llamaVariant = "cuda"; };
    settings = import ./settings.nix;
    # Provisioned on the node, never in the flake (docs/operations.md, "Run a cluster").
    apiTokenFile = "/var/lib/cairn-secrets/api.token";
    gossipKeyFile = "/var/lib/cairn-secrets/gossip.key";
    gossip = {
      enable = true;
      join = [ (import ../lan.nix).pxeServer ];
    };
    # settings.nix listens on the LAN so peers can route requests here.
    openFirewall = true;
    # Models run as socket-activated workers on the isolated cores (modules/inference.nix); a
    # worker with gpuLayers > 0 gets the NVIDIA devices and nothing else.
    # models.chat = {
    #   file = pkgs.fetchurl {
    #     url = "https://huggingface.co/<org>/<repo>/resolve/main/<model>.Q4_K_M.gguf";
    #     # `nix store prefetch-file <url>` prints it: (hash 'sha256-...'); lib.fakeHash here
    #     # instead fails the first build with the real one.
    #     hash = "sha256-...";
    #   };
    #   context = 8192;
    #   threads = 8;
    #   slots = 4;
    #   gpuLayers = 99;
    #   cpus = "isolated";
    # };
  };

  system.stateVersion = "26.05";
}
