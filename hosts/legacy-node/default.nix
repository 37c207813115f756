# Legacy node class: Core 2 Duo, 2 cores, 8 GB, no AVX; netbooted, stateless, named by the kernel command line.
{ lib, pkgs, ... }:
{
  imports = [ ../../images/netboot.nix ];

  # One image for every legacy machine: the PXE server's per-MAC script passes hostname=.
  networking.hostName = "";
  cairn.appliance = {
    enable = true;
    hostnameFromKernelCmdline = true;
    # /var is RAM here.
    journalMaxUse = lib.mkDefault "64M";
    sshKeys = import ../ssh-keys.nix;
    # The SSH host keys live on the secrets volume (below), so a node keeps its SSH identity
    # across boots once the volume exists; until then it gets new ones at every boot.
    sshHostKeyVolume = "/var/lib/cairn-secrets";
    # These nodes may suspend when idle (services.cairn.settings.power): peers wake them with
    # a magic packet. The BIOS must allow wake-up from the NIC too.
    wakeOnLan.enable = true;
  };

  # Core 0 keeps the kernel, interrupts and the supervisor; core 1 runs inference.
  cairn.tuning = {
    enable = true;
    cpuCount = 2;
    isolatedCores = "1";
  };

  # RAM keeps nothing across boots: the secrets live on a small file system labelled
  # cairn-secrets on the machine's own disk or a USB stick, made once (docs/operations.md,
  # "Run a cluster"). Without it the node still boots; cairn.service waits for the volume
  # (RequiresMountsFor) and fails after the device timeout, saying so in the journal.
  fileSystems."/var/lib/cairn-secrets" = {
    label = "cairn-secrets";
    fsType = "ext4";
    options = [
      "nofail"
      "x-systemd.device-timeout=10s"
      "nosuid"
      "nodev"
      "noexec"
    ];
  };

  # The default package: llama-cpp-python portable (SSE2 baseline, no AVX).
  services.cairn = {
    enable = true;
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
    # Models run as socket-activated workers pinned to the isolated core (modules/inference.nix).
    # The store path goes into the netboot image, which the node holds in RAM: keep it small
    # (docs/first-deployment.md, step 8).
    # models.tiny = {
    #   file = pkgs.fetchurl {
    #     url = "https://huggingface.co/<org>/<repo>/resolve/main/<model>.Q4_K_M.gguf";
    #     # `nix store prefetch-file <url>` prints it: (hash 'sha256-...'); lib.fakeHash here
    #     # instead fails the first build with the real one.
    #     hash = "sha256-...";
    #   };
    #   context = 2048;
    #   threads = 1;
    #   slots = 2;
    #   cpus = "isolated";
    # };
  };

  system.stateVersion = "26.05";
}
