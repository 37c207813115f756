# VM test: a chat request starts a socket-activated, hardened model worker; stopping it ends the process.
{ pkgs, self }:
let
  cairn = self.packages.${pkgs.stdenv.hostPlatform.system}.cairn;

  # The tiny demo models (random weights, byte-level vocab), written at build time by the
  # package's own generator: demo.gguf and demo-embed.onnx. An application is not a Python
  # module for withPackages until toPythonModule marks it; its dependencies come along.
  demoModels =
    pkgs.runCommand "cairn-demo-models"
      {
        nativeBuildInputs = [ (pkgs.python3.withPackages (ps: [ (ps.toPythonModule cairn) ])) ];
      }
      ''
        python -m cairn.inference.demo $out
        test -s $out/demo.gguf
      '';
in
pkgs.testers.runNixOSTest {
  name = "cairn-inference";

  nodes.machine = {
    imports = [
      self.nixosModules.default
      ./test-secrets.nix
    ];

    # The legacy node's shape: two cores, core 1 isolated for inference.
    virtualisation.cores = 2;
    virtualisation.memorySize = 2048;

    cairn.appliance.enable = true;
    cairn.tuning = {
      enable = true;
      cpuCount = 2;
      isolatedCores = "1";
    };
    services.cairn = {
      enable = true;
      settings = import ../../hosts/legacy-node/settings.nix;
      models.demo = {
        file = "${demoModels}/demo.gguf";
        kind = "gguf";
        cpus = "isolated";
      };
    };

    environment.systemPackages = [ pkgs.curl ];
  };

  testScript = ''
    import json
    import re

    worker = "cairn-model@demo.service"


    def prop(unit: str, name: str) -> str:
        return machine.succeed(f"systemctl show {unit} --property={name} --value").strip()


    machine.wait_for_unit("cairn-model@demo.socket")
    machine.wait_for_unit("cairn.service")

    with subtest("the socket listens for root and group cairn only; no worker runs yet"):
        assert prop(worker, "ActiveState") == "inactive", prop(worker, "ActiveState")
        owner = machine.succeed("stat -c '%U %G %a' /run/cairn/models/demo.sock").strip()
        assert owner == "root cairn 660", owner

    with subtest("a chat completion through the front starts the worker and is answered"):
        body = json.dumps(
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        )
        out = machine.succeed(
            "curl -sS --fail-with-body --max-time 180 -H 'Content-Type: application/json' "
            f"-d '{body}' http://127.0.0.1:8470/v1/chat/completions"
        )
        answer = json.loads(out)
        assert answer["choices"], answer
        assert answer["choices"][0]["message"]["role"] == "assistant", answer
        assert answer["usage"]["completion_tokens"] > 0, answer
        assert prop(worker, "ActiveState") == "active", prop(worker, "ActiveState")
        assert prop(worker, "SubState") == "running", prop(worker, "SubState")

    with subtest("the worker runs as a dynamic user, on the isolated core only"):
        pid = int(prop(worker, "MainPID"))
        assert pid > 0, pid
        uid = int(machine.succeed(f"stat -c %u /proc/{pid}").strip())
        # systemd's DynamicUser= range
        assert 61184 <= uid <= 65519, uid
        machine.succeed(f"grep -E '^Cpus_allowed_list:\\s+1$' /proc/{pid}/status")

    with subtest("stopping the service ends the worker; the socket keeps listening"):
        machine.succeed(f"systemctl stop {worker}")
        machine.fail(f"test -e /proc/{pid}")
        assert prop(worker, "ActiveState") == "inactive", prop(worker, "ActiveState")
        assert prop("cairn-model@demo.socket", "ActiveState") == "active"

    with subtest("the next request wakes the worker again"):
        answer = json.loads(machine.succeed(
            "curl -sS --fail-with-body --max-time 180 -H 'Content-Type: application/json' "
            f"-d '{body}' http://127.0.0.1:8470/v1/chat/completions"
        ))
        assert answer["choices"], answer

    with subtest("systemd-analyze security rates the worker's exposure at 2.0 or less"):
        out = machine.succeed(f"systemd-analyze security --no-pager {worker}")
        m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
        assert m, out
        assert float(m.group(1)) <= 2.0, out
  '';
}
