# Cairn's flake: NixOS systems for every host class, netboot images, the cairn package.
{
  description = "Cairn: a self-running inference cluster of NixOS nodes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      inherit (nixpkgs) lib;

      pkgs = nixpkgs.legacyPackages.${system};
      # CUDA and the NVIDIA driver are unfree; the same config as the workstation system, so
      # `nix build .#cairn-cuda` and the workstation share one store path.
      pkgsCuda = import nixpkgs {
        inherit system;
        config = import ./hosts/rtx4070-workstation/nixpkgs-config.nix;
      };

      cairnLib = import ./modules/lib;

      mkSystem =
        modules:
        lib.nixosSystem {
          modules = [
            { nixpkgs.hostPlatform = system; }
            self.nixosModules.default
          ]
          ++ modules;
        };

      # Netbooted variants of the host classes; the PXE server publishes (and so builds) only
      # those named in hosts/pxe-server/classes.nix.
      netboot = {
        legacy-node = self.nixosConfigurations.legacy-node;
        rtx4070-workstation = mkSystem [
          ./hosts/rtx4070-workstation
          ./images/netboot.nix
        ];
      };

      testArgs = {
        inherit pkgs self;
      };
    in
    {
      nixosModules = {
        default = ./modules;
        appliance = ./modules/appliance.nix;
        tuning = ./modules/tuning.nix;
        supervisor = ./modules/supervisor.nix;
        # services.cairn.models: cairn-model@NAME sockets and hardened worker units.
        inference = ./modules/inference.nix;
        pxe-server = ./pxe/server.nix;
      };

      nixosConfigurations = {
        # Netboot only: `nix build .#netboot-legacy-node`, served by the PXE server.
        legacy-node = mkSystem [ ./hosts/legacy-node ];
        # Installed: `nixos-rebuild switch --flake .#rtx4070-workstation`.
        rtx4070-workstation = mkSystem [
          ./hosts/rtx4070-workstation
          ./hosts/rtx4070-workstation/installed.nix
        ];
        pxe-server = mkSystem [
          ./hosts/pxe-server
          ./hosts/pxe-server/installed.nix
          {
            cairn.pxe.classes = lib.genAttrs (import ./hosts/pxe-server/classes.nix) (
              name:
              if netboot ? ${name} then
                netboot.${name}.config.system.build.cairnNetboot
              else
                throw "hosts/pxe-server/classes.nix: '${name}' is not a netbooted class (known: ${lib.concatStringsSep ", " (lib.attrNames netboot)})"
            );
          }
        ];
      };

      packages.${system} = {
        # Portable: runs on every node, legacy ones included.
        cairn = pkgs.callPackage ./modules/packages/cairn.nix { };
        cairn-cuda = pkgsCuda.callPackage ./modules/packages/cairn.nix { llamaVariant = "cuda"; };
        default = self.packages.${system}.cairn;

        netboot-legacy-node = netboot.legacy-node.config.system.build.netbootTree;
        netboot-rtx4070-workstation = netboot.rtx4070-workstation.config.system.build.netbootTree;
        # What the PXE server publishes: entry.ipxe, boot/*.ipxe and the tree of each class in
        # hosts/pxe-server/classes.nix.
        pxe-tree = self.nixosConfigurations.pxe-server.config.cairn.pxe.tree;

        # docs/options.md from the module options: `nix build .#options-md && cp result docs/options.md`.
        # The renderer is shared with `make options-doc` (tests/nix/options-doc.nix), which
        # evaluates the same declarations with a nixpkgs lib snapshot.
        options-md =
          let
            # disk-install.nix: imported by the installed hosts only; its options are documented too.
            inherit
              (mkSystem [
                { system.stateVersion = "26.05"; }
                ./modules/disk-install.nix
              ])
              options
              ;
          in
          pkgs.writeText "options.md" (
            cairnLib.optionsDoc.render (
              lib.optionAttrSetToDocList {
                inherit (options) cairn;
                services = { inherit (options.services) cairn; };
              }
            )
          );
      };

      checks.${system} =
        let
          # Every host fails its assertions until hosts/ssh-keys.nix holds an operator key.
          toplevels = lib.mapAttrs' (
            name: sys: lib.nameValuePair "host-${name}" sys.config.system.build.toplevel
          ) self.nixosConfigurations;

          # The pure-Nix cases of tests/nix (what `make test` runs with nix-instantiate),
          # evaluated here with builtins.tryEval. A throw case is checked for throwing; its
          # message is checked by the pytest runner, which reads stderr.
          nixCaseFiles = lib.filter (n: lib.hasPrefix "test_" n && lib.hasSuffix ".nix" n) (
            lib.attrNames (builtins.readDir ./tests/nix)
          );
          nixCases = lib.concatMap (f: import ./tests/nix/run.nix (./tests/nix + "/${f}")) nixCaseFiles;
          failed = lib.filter (
            r: if r.kind == "value" then r.threw || r.value != r.expected else !r.threw
          ) nixCases;
        in
        toplevels
        // {
          # The Python unit suite runs in the package's checkPhase.
          cairn = self.packages.${system}.cairn;

          nix-lib = pkgs.runCommand "cairn-nix-lib-cases" { } (
            if failed == [ ] then
              ''
                echo "${toString (lib.length nixCases)} pure-Nix cases passed" > $out
              ''
            else
              ''
                echo "pure-Nix cases failed:" >&2
                ${lib.concatMapStringsSep "\n" (r: "echo ${lib.escapeShellArg "  ${r.name}"} >&2") failed}
                exit 1
              ''
          );

          # docs/options.md must match the modules' options.
          options-doc = pkgs.runCommand "cairn-options-doc-fresh" { } (
            if builtins.pathExists ./docs/options.md then
              ''
                if ! diff -u ${./docs/options.md} ${self.packages.${system}.options-md}; then
                  echo "docs/options.md is stale: nix build .#options-md && cp result docs/options.md" >&2
                  exit 1
                fi
                touch $out
              ''
            else
              ''
                echo "docs/options.md is missing: nix build .#options-md && cp result docs/options.md" >&2
                exit 1
              ''
          );

          vm-node = import ./tests/nixos/node.nix testArgs;
          vm-netboot = import ./tests/nixos/netboot.nix testArgs;
          vm-inference = import ./tests/nixos/inference.nix testArgs;
          vm-cluster = import ./tests/nixos/cluster.nix testArgs;
          vm-rollback = import ./tests/nixos/rollback.nix testArgs;
        };

      formatter.${system} = pkgs.nixfmt;

      # Python with the supervisor's dependencies, and the formatter.
      devShells.${system}.default = pkgs.mkShell {
        packages = [ pkgs.nixfmt ];
        inputsFrom = [ self.packages.${system}.cairn ];
      };

      # The pure helpers of modules/lib (CPU lists, MAC maps, iPXE and dnsmasq renderers, the
      # options document).
      lib = cairnLib;
    };
}
