# nixpkgs config of the workstation, shared by its system and the flake's cairn-cuda package.
{
  # The NVIDIA driver and the CUDA toolkit are unfree.
  allowUnfree = true;
  # RTX 4070 is Ada Lovelace (sm_89): build CUDA device code for it alone.
  cudaCapabilities = [ "8.9" ];
}
