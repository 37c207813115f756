# The host classes this PXE server publishes (cairn.pxe.classes), by name. Each one is built with
# the server: "rtx4070-workstation" builds CUDA llama.cpp, so it is left out until a machine
# netboots that class (the workstation is installed on its disk). A machine in machines.nix whose
# class is not listed here fails the build, naming it.
[
  "legacy-node"
  # "rtx4070-workstation"
]
