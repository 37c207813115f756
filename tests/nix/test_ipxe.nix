# Cases for modules/lib/ipxe.nix: entryScript, hostScript and bootFiles, refusals included.
let
  inherit (import ../../modules/lib) ipxe;
  base = "http://10.0.0.2:8080";
  classes = {
    legacy-node = {
      kernelParams = [
        "isolcpus=domain,managed_irq,1"
        "console=ttyS0"
      ];
      init = "/nix/store/aaaa-nixos-system/init";
    };
    rtx4070-workstation.kernelParams = [ "nohz_full=2-5,12-15" ];
  };
  hosts = {
    node-a = {
      mac = "52-54-00-00-00-01";
      class = "legacy-node";
    };
    ws = {
      mac = "52:54:00:00:00:02";
      class = "rtx4070-workstation";
    };
  };
  files = ipxe.bootFiles {
    baseUrl = base;
    inherit hosts classes;
    defaultClass = "legacy-node";
  };
in
[
  # entryScript
  {
    name = "ipxe.entryScript: fetches by MAC, falls back to the default";
    expr = ipxe.entryScript { baseUrl = base; };
    expected = ''
      #!ipxe
      # Cairn netboot entry: this machine's own boot script (by MAC), else the default class.
      imgfetch --name cairn-host http://10.0.0.2:8080/boot/''${net0/mac}.ipxe || goto default
      chain cairn-host || goto failed
      :default
      echo Cairn: no boot script for ''${net0/mac}; booting the default class
      chain http://10.0.0.2:8080/boot/default.ipxe || goto failed
      :failed
      echo Cairn: netboot from http://10.0.0.2:8080 failed; back to the firmware boot order
      exit 1
    '';
  }
  {
    name = "ipxe.entryScript: trailing slashes of baseUrl are dropped";
    expr = ipxe.entryScript { baseUrl = "https://boot.lan/cairn//"; } == ipxe.entryScript {
      baseUrl = "https://boot.lan/cairn";
    };
    expected = true;
  }
  {
    name = "ipxe.entryScript: refuses a URL that is not http(s)";
    expr = ipxe.entryScript { baseUrl = "tftp://10.0.0.2"; };
    throws = "cairn.pxe: baseUrl 'tftp://10.0.0.2' is not an http:// or https:// URL";
  }

  # hostScript
  {
    name = "ipxe.hostScript: the netboot.ipxe kernel line, plus hostname and parameters";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      hostname = "node-a";
      kernelParams = [
        "isolcpus=domain,managed_irq,1"
        "console=ttyS0"
      ];
      init = "/nix/store/aaaa-nixos-system/init";
    };
    expected = ''
      #!ipxe
      # Cairn legacy-node boot of node-a
      kernel http://10.0.0.2:8080/legacy-node/bzImage init=/nix/store/aaaa-nixos-system/init initrd=initrd hostname=node-a isolcpus=domain,managed_irq,1 console=ttyS0
      initrd http://10.0.0.2:8080/legacy-node/initrd
      boot
    '';
  }
  {
    name = "ipxe.hostScript: without hostname, init or parameters";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
    };
    expected = ''
      #!ipxe
      # Cairn legacy-node boot (default for unlisted machines)
      kernel http://10.0.0.2:8080/legacy-node/bzImage initrd=initrd
      initrd http://10.0.0.2:8080/legacy-node/initrd
      boot
    '';
  }
  {
    name = "ipxe.hostScript: refuses a hostname that is not a DNS label";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      hostname = "node a";
    };
    throws = "cairn.pxe: hostname 'node a' is not a valid DNS label";
  }
  {
    name = "ipxe.hostScript: refuses a kernel parameter with a space";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      kernelParams = [ "quiet shell" ];
    };
    throws = "cairn.pxe: kernel parameter 'quiet shell' is empty or contains whitespace";
  }
  {
    name = "ipxe.hostScript: refuses an empty kernel parameter";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      kernelParams = [ "" ];
    };
    throws = "cairn.pxe: kernel parameter '' is empty or contains whitespace";
  }
  {
    name = "ipxe.hostScript: refuses a class that is a path";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "../etc";
    };
    throws = "cairn.pxe: class '../etc' is not a plain name";
  }
  {
    name = "ipxe.hostScript: refuses a relative init";
    expr = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      init = "init";
    };
    throws = "cairn.pxe: init 'init' is not an absolute path";
  }

  # bootFiles
  {
    name = "ipxe.bootFiles: one file per host MAC plus default.ipxe";
    expr = builtins.attrNames files;
    expected = [
      "52:54:00:00:00:01.ipxe"
      "52:54:00:00:00:02.ipxe"
      "default.ipxe"
    ];
  }
  {
    name = "ipxe.bootFiles: a host gets its class parameters and its hostname";
    expr = files."52:54:00:00:00:01.ipxe";
    expected = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      hostname = "node-a";
      inherit (classes.legacy-node) kernelParams init;
    };
  }
  {
    name = "ipxe.bootFiles: a class without init boots without init=";
    expr = files."52:54:00:00:00:02.ipxe";
    expected = ''
      #!ipxe
      # Cairn rtx4070-workstation boot of ws
      kernel http://10.0.0.2:8080/rtx4070-workstation/bzImage initrd=initrd hostname=ws nohz_full=2-5,12-15
      initrd http://10.0.0.2:8080/rtx4070-workstation/initrd
      boot
    '';
  }
  {
    name = "ipxe.bootFiles: the default boots defaultClass without a hostname";
    expr = files."default.ipxe";
    expected = ipxe.hostScript {
      baseUrl = base;
      class = "legacy-node";
      inherit (classes.legacy-node) kernelParams init;
    };
  }
  {
    name = "ipxe.bootFiles: no hosts, only the default";
    expr = builtins.attrNames (
      ipxe.bootFiles {
        baseUrl = base;
        hosts = { };
        inherit classes;
        defaultClass = "rtx4070-workstation";
      }
    );
    expected = [ "default.ipxe" ];
  }
  {
    name = "ipxe.bootFiles: refuses a host naming an unknown class";
    expr = ipxe.bootFiles {
      baseUrl = base;
      hosts = hosts // {
        node-b = {
          mac = "52:54:00:00:00:03";
          class = "gpu";
        };
      };
      inherit classes;
      defaultClass = "legacy-node";
    };
    throws = "cairn.pxe.hosts.node-b.class: unknown class 'gpu' (known: legacy-node, rtx4070-workstation)";
  }
  {
    name = "ipxe.bootFiles: refuses an unknown default class";
    expr = ipxe.bootFiles {
      baseUrl = base;
      inherit hosts classes;
      defaultClass = "legacy";
    };
    throws = "cairn.pxe.defaultClass: unknown class 'legacy' (known: legacy-node, rtx4070-workstation)";
  }
  {
    name = "ipxe.bootFiles: refuses a MAC given to two hosts";
    expr = ipxe.bootFiles {
      baseUrl = base;
      hosts = hosts // {
        node-b = {
          mac = "52:54:00:00:00:01";
          class = "legacy-node";
        };
      };
      inherit classes;
      defaultClass = "legacy-node";
    };
    throws = "cairn.pxe.hosts: MAC address 52:54:00:00:00:01 is given to more than one host: 'node-a' and 'node-b'";
  }
]
